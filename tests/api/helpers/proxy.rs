//! A TCP proxy to cut a peer off (the database "goes down" and comes back).

/// Forwards `127.0.0.1:<port>` to `target`. `stop` closes the port and cuts every connection
/// through it (the peer is gone: connections refused); `start` opens it again.
pub struct TcpProxy {
    pub port: u16,
    target: String,
    running: Option<(
        tokio::task::JoinHandle<()>,
        tokio::sync::watch::Sender<bool>,
    )>,
}

impl TcpProxy {
    pub async fn to(target: &str) -> Self {
        let mut proxy = Self {
            port: 0,
            target: target.to_owned(),
            running: None,
        };
        proxy.start().await;
        proxy
    }

    pub async fn start(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind proxy");
        self.port = listener.local_addr().expect("addr").port();
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let target = self.target.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let (target, mut cut) = (target.clone(), cut_rx.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        self.running = Some((task, cut));
    }

    pub fn stop(&mut self) {
        if let Some((task, cut)) = self.running.take() {
            task.abort();
            let _ = cut.send(true);
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop();
    }
}
