//! `portcullis-loadgen`: see the `portcullis_benches::loadgen` module, or `--help`.
#![forbid(unsafe_code)]

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut args = std::env::args().skip(1);
    // The bare-tunnel peer: this binary again, as its own pinned process.
    if args.next().as_deref() == Some("--serve-tunnel") {
        let upstream = args
            .next()
            .ok_or_else(|| anyhow::anyhow!("--serve-tunnel needs the origin's address"))?
            .parse()?;
        return rt.block_on(portcullis_benches::loadgen::tunnel::serve(upstream));
    }
    rt.block_on(portcullis_benches::loadgen::main())
}
