//! Raw Argon2id throughput of this machine: `threads` threads (default: one
//! per core) hashing with Gatehouse's parameters (m=19456 KiB, t=2, p=1)
//! for `seconds`, nothing else running. The ceiling a login flood is
//! compared with (bench/login-flood.sh).
//!
//! `cargo run --release -p auth-core --example argon2_rate -- [seconds] [threads]`

use std::time::{Duration, Instant};

use argon2::{Algorithm, Argon2, Block, Params, Version};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(cores);
    let params = Params::new(19_456, 2, 1, None).map_err(|e| e.to_string())?;
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let params = params.clone();
            std::thread::spawn(move || {
                let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
                let mut blocks = vec![Block::default(); params.block_count()];
                let mut out = [0u8; 32];
                let mut done = 0u64;
                while Instant::now() < until {
                    if argon
                        .hash_password_into_with_memory(
                            b"correct horse battery staple",
                            b"saltsaltsaltsalt",
                            &mut out,
                            &mut blocks,
                        )
                        .is_ok()
                    {
                        done += 1;
                    }
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for worker in workers {
        total += worker.join().map_err(|_| "a hashing thread panicked")?;
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    println!("hashes_per_second {rate:.1} threads {threads} seconds {seconds}");
    Ok(())
}
