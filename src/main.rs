fn main() {
    println!("xpu-ops {} on {}", xpu_ops::VERSION, xpu_ops::active_isa());
}
