//! `notes-service` standalone: `--listen ADDR` (default 127.0.0.1:9001),
//! `--database-url URL` (default `sqlite://./data/notes.db`) and
//! `--nats-url URL` (consume `user.deleted`), or the environment variables
//! NOTES_LISTEN, NOTES_DATABASE_URL and NOTES_NATS_URL.

use anyhow::Context as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(ansi).init();
    let mut listen = std::env::var("NOTES_LISTEN").unwrap_or_else(|_| "127.0.0.1:9001".into());
    let mut url = std::env::var("NOTES_DATABASE_URL").unwrap_or_else(|_| "sqlite://./data/notes.db".into());
    let mut nats = std::env::var("NOTES_NATS_URL").ok();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().context("--listen needs an address")?,
            "--database-url" => url = args.next().context("--database-url needs a URL")?,
            "--nats-url" => nats = Some(args.next().context("--nats-url needs a URL")?),
            other => anyhow::bail!("unknown argument {other:?}; use --listen ADDR --database-url URL"),
        }
    }
    if let Some(path) = url.strip_prefix("sqlite://").and_then(|p| std::path::Path::new(p).parent()) {
        std::fs::create_dir_all(path).ok();
    }
    let store = notes_service::NotesStore::connect(&url).await.with_context(|| format!("open {url}"))?;
    // With NATS: erase the notes of deleted users and confirm it.
    let _consumer = match nats {
        Some(nats) => {
            let client = async_nats::connect(&nats).await.with_context(|| format!("connect to {nats}"))?;
            let handler =
                notes_service::NatsHandler { store: store.clone(), jetstream: async_nats::jetstream::new(client) };
            let settings = auth_events::ConsumerSettings::new(notes_service::SERVICE, "user.deleted");
            let consumer = auth_events::Consumer::connect(&nats, settings, std::sync::Arc::new(handler)).await?;
            Some(std::sync::Arc::new(consumer).spawn())
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("listen on {listen}"))?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    notes_service::serve(listener, notes_service::router(store), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
