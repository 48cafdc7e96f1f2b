fn main() {
    eprintln!("k8slan-agent: not built yet");
    std::process::exit(2);
}
