#[tokio::main]
async fn main() {
    edgewasm_shim::run().await;
}
