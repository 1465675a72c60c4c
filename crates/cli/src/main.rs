fn main() {
    println!("safe-coder {}", env!("CARGO_PKG_VERSION"));
}
