//! Smoke test against a running proxy serving `examples/features.toml`:
//! `cargo run -p featureproxy-client --example smoke -- 127.0.0.1:7000`.
//! Over TLS: `-- 127.0.0.1:7443 --tls-ca ca.crt [--tls-cert client.crt --tls-key client.key]
//! [--tls-server-name NAME]`.
//! Pings, writes two entities of each example view, reads them back with an unknown key, and
//! prints what came back.

use std::time::SystemTime;

use featureproxy_client::{Client, ClientOptions, GetOptions, TlsOptions, Value};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:7000".to_string();
    let (mut ca, mut cert, mut key, mut name) = (None, None, None, None);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--tls-ca" => ca = Some(value()?),
            "--tls-cert" => cert = Some(value()?),
            "--tls-key" => key = Some(value()?),
            "--tls-server-name" => name = Some(value()?),
            _ => addr = a,
        }
    }
    let tls = ca.map(|ca| {
        let mut t = TlsOptions::new(ca);
        if let (Some(c), Some(k)) = (cert, key) {
            t = t.client_cert(c, k);
        }
        if let Some(n) = name {
            t = t.server_name(n);
        }
        t
    });
    let opts = ClientOptions {
        tls,
        ..Default::default()
    };
    let client = Client::connect(addr, opts).await?;
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
