//! loadgen: power-law traffic for featureproxy (placeholder until its issue lands).

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() {
    eprintln!("loadgen: not implemented yet");
    std::process::exit(2);
}
