//! A small W3C WebDriver client for the browser tests: headless Chromium through chromedriver,
//! both from Debian's packages (`tests/run.sh` installs them).

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process with one browser session.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    client: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver leads its own process group, and Chromium's processes are in it:
        // killing the group ends them all. Killing the driver alone left its browsers behind,
        // hundreds after a few test runs.
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl Browser {
    /// Starts headless Chromium, with or without JavaScript.
    pub async fn start(javascript: bool) -> Self {
        for binary in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            assert!(
                Path::new(binary).exists(),
                "{binary} is missing: run the README's test command, bash tests/run.sh"
            );
        }
        let port = free_port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + crate::helpers::patience(20);
        while client.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().expect("profile dir");
        let mut prefs = json!({});
        if !javascript {
            prefs = json!({"profile.managed_default_content_settings.javascript": 2});
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                    "--window-size=1100,900", format!("--user-data-dir={}", profile.path().display()),
                ],
                "prefs": prefs,
            }
        }}});
        let response: Value = client
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session JSON");
        let session = response["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {response}"))
            .to_owned();
        Self {
            driver,
            base,
            session,
            client,
            _profile: profile,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.client.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response: Value = request
            .send()
            .await
            .expect("webdriver")
            .json()
            .await
            .expect("webdriver JSON");
        response["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({"url": url})).await;
    }

    /// The first element matching `css`, if any.
    pub async fn find(&self, css: &str) -> Option<String> {
        let value = self
            .post("/element", json!({"using": "css selector", "value": css}))
            .await;
        value[ELEMENT].as_str().map(str::to_owned)
    }

    /// Waits (up to `patience(10)`) for an element matching `css`.
    pub async fn wait_for(&self, css: &str) -> String {
        let deadline = Instant::now() + crate::helpers::patience(10);
        loop {
            if let Some(element) = self.find(css).await {
                return element;
            }
            assert!(
                Instant::now() < deadline,
                "no element {css} within {:?}",
                crate::helpers::patience(10)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn type_into(&self, element: &str, text: &str) {
        self.post(&format!("/element/{element}/value"), json!({"text": text}))
            .await;
    }

    pub async fn click(&self, element: &str) {
        self.post(&format!("/element/{element}/click"), json!({}))
            .await;
    }

    pub async fn text(&self, element: &str) -> String {
        let value = self
            .call(
                reqwest::Method::GET,
                &format!("/element/{element}/text"),
                None,
            )
            .await;
        value.as_str().unwrap_or_default().to_owned()
    }

    /// Enters the iframe `element`.
    pub async fn enter_frame(&self, element: &str) {
        self.post("/frame", json!({"id": {ELEMENT: element}})).await;
    }

    pub async fn leave_frame(&self) {
        self.post("/frame/parent", json!({})).await;
    }

    /// Waits (up to `patience(10)`) until the text of `css` contains `needle`.
    pub async fn wait_for_text(&self, css: &str, needle: &str) -> String {
        let deadline = Instant::now() + crate::helpers::patience(10);
        loop {
            if let Some(element) = self.find(css).await {
                let text = self.text(&element).await;
                if text.contains(needle) {
                    return text;
                }
                assert!(
                    Instant::now() < deadline,
                    "{css} shows {text:?}, not {needle:?}, after 10 s"
                );
            } else {
                assert!(
                    Instant::now() < deadline,
                    "no element {css} within {:?}",
                    crate::helpers::patience(10)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Types `code` into the code page's input and presses confirm.
    pub async fn submit_code(&self, code: &str) {
        self.type_into(&self.wait_for("#og-code").await, code).await;
        self.click(&self.wait_for("[data-og-confirm]").await).await;
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the current frame.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": args}))
            .await
    }

    /// The WCAG 2.1 A and AA violations axe-core (npm, installed by tests/run.sh) finds in the
    /// current frame's document, each as `id (impact): help` and the elements it names.
    pub async fn axe_violations(&self) -> Vec<String> {
        let path = format!("{}/axe-core/axe.min.js", crate::helpers::node_modules());
        let source = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e} (bash tests/run.sh installs axe-core)"));
        // WebDriver's scripts are not the page's: the page's CSP does not apply to them.
        self.execute(
            &format!("{source}\n;window.axe = axe; return true;"),
            json!([]),
        )
        .await;
        let script = "var done = arguments[arguments.length - 1];
            axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})
              .then(function (r) {
                done(r.violations.map(function (v) {
                  return v.id + ' (' + v.impact + '): ' + v.help + ' — ' + v.nodes.map(function (n) {
                    return n.target.join(' ') + ': ' + n.failureSummary;
                  }).join(' | ');
                }));
              }, function (e) { done(['axe failed: ' + e]); });";
        let found = self
            .post("/execute/async", json!({"script": script, "args": []}))
            .await;
        found
            .as_array()
            .unwrap_or_else(|| panic!("axe-core answered {found}"))
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Sizes the window so that the page's viewport is `width` × `height` CSS pixels.
    pub async fn set_viewport(&self, width: i64, height: i64) {
        let (mut outer_width, mut outer_height) = (width, height);
        for _ in 0..3 {
            self.post(
                "/window/rect",
                json!({"width": outer_width, "height": outer_height}),
            )
            .await;
            let inner = self
                .execute("return [window.innerWidth, window.innerHeight];", json!([]))
                .await;
            let (w, h) = (
                inner[0].as_i64().unwrap_or(width),
                inner[1].as_i64().unwrap_or(height),
            );
            if (w, h) == (width, height) {
                return;
            }
            outer_width += width - w;
            outer_height += height - h;
        }
    }

    /// Saves a PNG of the viewport under `test-output/`.
    pub async fn screenshot(&self, name: &str) -> std::path::PathBuf {
        let data = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().expect("base64"))
            .expect("png");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("test-output");
        std::fs::create_dir_all(&dir).expect("test-output");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }
}
