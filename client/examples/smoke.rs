//! Smoke test against a running proxy serving `examples/features.toml`:
//! `cargo run -p featureproxy-client --example smoke -- 127.0.0.1:7000`.
//! Pings, writes two entities of each example view, reads them back with an unknown key, and
//! prints what came back.

use std::time::SystemTime;

use featureproxy_client::{Client, ClientOptions, GetOptions, Value};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7000".to_string());
    let client = Client::connect(addr, ClientOptions::default()).await?;
    println!("hello: {:?}", client.hello_info().await?);
    println!("ping: {:?}", client.ping().await?);

    let user = client.schema("user_features").await?;
    println!(
        "user_features: id {} schema {:#x} row_bytes {} features {}",
        user.view_id(),
        user.schema_id(),
        user.row_bytes(),
        user.len()
    );
    let now = SystemTime::now();
    let row = |base: f32| {
        (0..16)
            .map(|j| Value::F32(base + j as f32))
            .collect::<Vec<_>>()
    };
    let written = client
        .put(
            "user_features",
            &[("u1", now, row(0.0)), ("u2", now, row(100.0))],
        )
        .await?;
    println!("put user_features: {written}");
    let b = client
        .get_with(
            "user_features",
            &["u1", "u2", "nobody"],
            GetOptions {
                bypass_cache: true,
                deadline: None,
            },
        )
        .await?;
    for i in 0..b.len() {
        println!(
            "  {i}: {:?} age {:?} f15 {:?}",
            b.status(i),
            b.age(i),
            b.value(i, "f15")
        );
    }
    let m = b
        .as_f32_matrix()
        .ok_or("user_features should be an aligned f32 matrix")?;
    println!("  matrix {} floats, row 1 starts {:?}", m.len(), &m[16..18]);

    let fraud = [
        Value::I64(3),
        Value::F32(12.5),
        Value::F64(99.0),
        Value::I32(400),
        Value::I32(2),
        Value::Bool(true),
        Value::F32(0.01),
    ];
    client
        .put("fraud_features", &[("acct9", now, fraud)])
        .await?;
    let b = client.get("fraud_features", &["acct9", "acct0"]).await?;
    println!("fraud acct9: {:?} {:?}", b.status(0), b.row(0));
    println!("fraud acct0: {:?} {:?}", b.status(1), b.row(1));
    Ok(())
}
