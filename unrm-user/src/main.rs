mod holders;
mod ingest;
mod probe;

fn main() -> anyhow::Result<()> {
    env_logger::init();
    let mut probes = probe::Probes::load(&probe::LoadOptions { ring_bytes: 1 << 22, hooks: true })?;
    println!("fs hooks: {:?}", probes.fs_hooks());
    let ring = probes.take_events()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(ingest::forward(ring, tx)).unwrap();
    });
    eprintln!("ready");
    for ev in rx {
        println!("{ev:?}");
    }
    Ok(())
}
