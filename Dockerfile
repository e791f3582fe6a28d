# orderguard's container image: built with the Rust toolchain, run on a minimal base as a
# non-root user. `brands/_base` (what every brand inherits), the example brands and the
# migrations are inside; the service applies the migrations itself (they are compiled in) and
# `orderguard migrate` runs them alone, as the Helm chart's pre-install/pre-upgrade Job does.
#
#   docker build -t orderguard .
#   docker run --rm -p 8080:8080 -e ORDERGUARD_HTTP__HOST=0.0.0.0 orderguard   # dev mode
#
# (The tests check that every path copied here exists; no Docker engine runs on the machines
# that build this repository.)

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so a change to the service's code does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked || true
COPY src src
COPY migrations migrations
COPY brands brands
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

# glibc and CA certificates, nothing else; uid 65532 (`nonroot`).
FROM gcr.io/distroless/cc-debian12:nonroot
WORKDIR /app
COPY --from=build /src/target/release/orderguard /usr/local/bin/orderguard
# `_base` and the example brands: `docker run` in dev mode serves the README's demo; the Helm
# chart mounts its own brands folder instead.
COPY brands/_base /app/brands/_base
COPY brands/nordwind /app/brands/nordwind
COPY brands/fjallnet /app/brands/fjallnet
COPY migrations /app/migrations
USER 65532:65532
ENV ORDERGUARD_BRANDS_DIR=/app/brands \
    ORDERGUARD_DATA_DIR=/tmp/orderguard
EXPOSE 8080 9100
ENTRYPOINT ["/usr/local/bin/orderguard"]
CMD ["serve"]
