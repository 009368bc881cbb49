//! The emulator's own capacity, for comparison with files reaching the catalog through a mount:
//! COUNT creates straight through `HttpApi` with CONCURRENCY in flight, timed.
//! Usage: direct_creates URL COUNT CONCURRENCY

use std::sync::Arc;
use std::time::Instant;

use maxlofs_api::http::{HttpApi, Timeouts};
use maxlofs_api::{Keys, MediaApi, MediaState, NewMedia, SecretKey};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, count, concurrency] = args.as_slice() else {
        anyhow::bail!("usage: direct_creates URL COUNT CONCURRENCY");
    };
    let count: usize = count.parse()?;
    let concurrency: usize = concurrency.parse()?;
    let keys = Keys {
        device: SecretKey::new("demo-device-key"),
        user: None,
    };
    let api = Arc::new(HttpApi::new(url, keys, Timeouts::default())?);
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (api, next) = (api.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    return Ok::<_, anyhow::Error>(());
                }
                let media = NewMedia {
                    media_path: format!("direct/{i:06}"),
                    state: MediaState {
                        file_hash: format!("{i:064x}"),
                        file_size: 4096,
                        ctime: "2026-11-26T00:00:00.000Z".into(),
                        mtime: "2026-11-26T00:00:00.000Z".into(),
                    },
                };
                api.create(1, &media).await?;
            }
        }));
    }
    for worker in workers {
        worker.await??;
    }
    println!("{:.3}", started.elapsed().as_secs_f64());
    Ok(())
}
