//! Rebuild the eBPF object when `bpf-linker` changes: cargo cannot see this undeclared tool
//! dependency on its own.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!(
            "cargo:warning=bpf-linker not found on PATH: run `cargo xtask setup` to install it"
        ),
    }
}
