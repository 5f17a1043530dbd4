//! Several processes on PostgreSQL and NATS, as in production: two
//! auth-services, two gateways, one upstream.

use std::time::{Duration, Instant};

use serde_json::json;

use super::*;

fn with_services(mut cmd: Command, db: &TestDatabase) -> Command {
    cmd.env("GATEHOUSE_DATABASE__URL", &db.url)
        .env("GATEHOUSE_NATS__URL", std::env::var("GATEHOUSE_TEST_NATS_URL").unwrap());
    cmd
}

async fn echo_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(|| async { "ok" });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test]
#[cfg_attr(not(services_available), ignore = "set GATEHOUSE_TEST_POSTGRES_URL and GATEHOUSE_TEST_NATS_URL")]
async fn a_logout_through_one_gateway_is_refused_by_every_gateway_within_a_second() {
    let dir = TempDir::new();
    let db = TestDatabase::create(Backend::Postgres).await;
    let auth_service = || {
        let mut cmd = with_services(gatehouse(&dir.data()), &db);
        cmd.arg("auth-service");
        cmd
    };
    let auth_a = start(auth_service()).await;
    let auth_b = start(auth_service()).await;
    let upstream = echo_upstream().await;
    let gateway = |auth: &str| {
        let file = dir.0.join(format!("gateway-{}.toml", uuid::Uuid::new_v4().simple()));
        std::fs::write(
            &file,
            format!("[gateway]\nauth_service_url = \"{auth}\"\n\n[[gateway.routes]]\nprefix = \"/api\"\nupstream = \"{upstream}\"\n"),
        )
        .unwrap();
        let mut cmd = with_services(gatehouse(&dir.data()), &db);
        cmd.arg("--config").arg(file).arg("gateway");
        cmd
    };
    let gw_a = start(gateway(&auth_a.url)).await;
    let gw_b = start(gateway(&auth_b.url)).await;
    let client = reqwest::Client::new();
    for g in [&gw_a.url, &gw_b.url] {
        let deadline = Instant::now() + Duration::from_secs(20);
        while client.get(format!("{g}/readyz")).send().await.unwrap().status() != 200 {
            assert!(Instant::now() < deadline, "{g} never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let email = format!("cluster-{}@example.com", uuid::Uuid::new_v4().simple());
    let creds = json!({"email": email, "password": PASSWORD});
    assert_eq!(client.post(format!("{}/auth/register", gw_a.url)).json(&creds).send().await.unwrap().status(), 201);
    let mut delays = Vec::new();
    for _ in 0..20 {
        let login = client.post(format!("{}/auth/login", gw_a.url)).json(&creds).send().await.unwrap();
        assert_eq!(login.status(), 200);
        let pairs: Vec<String> = login
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
            .collect();
        let csrf = pairs.iter().find_map(|p| p.strip_prefix("__Host-csrf_token=")).unwrap().to_owned();
        let cookie = pairs.join("; ");
        for g in [&gw_a.url, &gw_b.url] {
            let ok = client.get(format!("{g}/api/x")).header("cookie", &cookie).send().await.unwrap();
            assert_eq!(ok.status(), 200);
        }
        let logout = client
            .delete(format!("{}/auth/logout", gw_b.url))
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf)
            .send()
            .await
            .unwrap();
        assert_eq!(logout.status(), 204);
        let since = Instant::now();
        let mut refused = [false, false];
        while refused != [true, true] {
            assert!(since.elapsed() < Duration::from_secs(1), "a gateway still accepted a logged-out cookie after 1 s");
            for (i, g) in [&gw_a.url, &gw_b.url].into_iter().enumerate() {
                if !refused[i] {
                    let status =
                        client.get(format!("{g}/api/x")).header("cookie", &cookie).send().await.unwrap().status();
                    refused[i] = status == 401;
                }
            }
        }
        delays.push(since.elapsed());
    }
    delays.sort();
    eprintln!(
        "logout to 401 on both gateways over {} logouts: p50 {:?}, p99 {:?}, max {:?}",
        delays.len(),
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays[delays.len() - 1]
    );
    for server in [gw_a, gw_b, auth_a, auth_b] {
        assert!(server.stop().await.success());
    }
}
