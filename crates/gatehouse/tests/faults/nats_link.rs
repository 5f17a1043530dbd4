//! NATS faults between processes: a link that hangs, NATS unreachable from
//! the auth-service, NATS down when the services start. The auth-service
//! (on SQLite) and a standalone gateway each reach NATS their own way, so
//! one link can fail while the other holds.

use std::time::Instant;

use serde_json::{Value, json};

use super::*;
use crate::deployment::*;

#[tokio::test]
async fn a_gateway_whose_nats_link_hangs_fails_closed_within_max_staleness_and_recovers() {
    let nats = OwnNats::fresh().await;
    let relay = Relay::start(([127, 0, 0, 1], nats.port()).into()).await;
    let max_staleness = Duration::from_secs(1);
    let d = deploy(&nats.url(), &relay.nats_url(), "1").await;
    let client = reqwest::Client::new();
    let gw = &d.gateway.url;
    within(Duration::from_secs(30), || ready(&client, gw)).await.expect("the gateway never became ready");
    let browser = sign_in(&client, gw).await;
    assert_eq!(api(&client, gw, &browser).await.0, 200);

    relay.set(Link::Hang);
    let hung = Instant::now();
    logout_at_auth(&client, &d.auth.url, &browser).await;
    // The gateway cannot hear of that logout; it must stop vouching instead.
    let closed = within(Duration::from_secs(20), || async { api(&client, gw, &browser).await.0 != 200 })
        .await
        .expect("a gateway with a hung NATS link kept accepting a logged-out cookie");
    let closed_after = hung.elapsed();
    assert_eq!(api(&client, gw, &browser).await, (503, "revocation_unavailable".to_owned()));
    assert!(!ready(&client, gw).await, "/readyz stayed 200 on a hung link");
    eprintln!("hung link: failed closed {closed_after:?} after the hang ({closed:?} after the logout)");
    assert!(
        closed_after <= max_staleness + Duration::from_secs(2),
        "failed closed only after {closed_after:?}; max_staleness is {max_staleness:?}"
    );

    // Long enough for the client to give the link up (three missed 5 s
    // pings) and try new ones, which hang too: it stays closed throughout.
    while hung.elapsed() < Duration::from_secs(20) {
        assert_eq!(api(&client, gw, &browser).await.0, 503, "the gateway vouched again while the link hung");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    relay.set(Link::Pass);
    let back = Instant::now();
    within(Duration::from_secs(60), || async { api(&client, gw, &browser).await.0 == 401 })
        .await
        .expect("the gateway never heard of the logout once the link passed again");
    eprintln!("hung link: after 20 s hung, the logout was enforced {:?} after the link passed again", back.elapsed());
    let other = sign_in(&client, gw).await;
    assert_eq!(api(&client, gw, &other).await.0, 200, "the gateway did not vouch again after the link came back");
}

#[tokio::test]
async fn logouts_while_nats_hangs_answer_at_once_and_reach_the_gateway_once_it_is_back() {
    let nats = OwnNats::fresh().await;
    let relay = Relay::start(([127, 0, 0, 1], nats.port()).into()).await;
    let d = deploy(&relay.nats_url(), &nats.url(), "5").await;
    let client = reqwest::Client::new();
    let gw = &d.gateway.url;
    within(Duration::from_secs(30), || ready(&client, gw)).await.expect("the gateway never became ready");
    let mut browsers = Vec::new();
    for _ in 0..3 {
        let browser = sign_in(&client, gw).await;
        assert_eq!(api(&client, gw, &browser).await.0, 200);
        browsers.push(browser);
    }

    relay.set(Link::Hang);
    let mut slowest = Duration::ZERO;
    for browser in &browsers {
        slowest = slowest.max(logout_at_auth(&client, &d.auth.url, browser).await);
    }
    eprintln!("NATS hung: slowest of {} logouts took {slowest:?}", browsers.len());
    assert!(slowest < Duration::from_secs(2), "a logout waited {slowest:?} for NATS");
    // Long enough for the relay to back off and the client to give the link up.
    tokio::time::sleep(Duration::from_secs(20)).await;

    relay.set(Link::Pass);
    let back = Instant::now();
    for browser in &browsers {
        within(Duration::from_secs(120), || async { api(&client, gw, browser).await.0 == 401 })
            .await
            .expect("a logout made while NATS hung never reached the gateway");
    }
    eprintln!("NATS hung 20 s: every logout reached the gateway {:?} after the link passed again", back.elapsed());
}

#[tokio::test]
async fn both_services_start_while_nats_is_down_and_catch_up_when_it_comes() {
    let store = TempDir::new();
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let mut d = deploy(&url, &url, "2").await;
    d.auth.wait_for_log(&url).await;
    let client = reqwest::Client::new();
    let (auth, gw) = (d.auth.url.clone(), d.gateway.url.clone());
    let readiness: Value = client.get(format!("{auth}/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(readiness["nats"], "disconnected", "{readiness}");
    assert_eq!(readiness["status"], "ready", "{readiness}");
    let browser = sign_in(&client, &auth).await;
    assert_eq!(api(&client, &gw, &browser).await, (503, "revocation_unavailable".to_owned()));
    assert!(!ready(&client, &gw).await);

    let _nats = OwnNats::start(port, &store.0).await;
    let current = within(Duration::from_secs(60), || async { api(&client, &gw, &browser).await.0 == 200 })
        .await
        .expect("the gateway never became current after NATS started");
    eprintln!("NATS late: the gateway vouched {current:?} after NATS started");
    logout_at_auth(&client, &auth, &browser).await;
    within(Duration::from_secs(60), || async { api(&client, &gw, &browser).await.0 == 401 })
        .await
        .expect("a logout after NATS came never reached the gateway");
    let readiness: Value = client.get(format!("{auth}/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(readiness["nats"], "connected", "{readiness}");
    let registered =
        within(Duration::from_secs(60), || async { !stream_ids(&url, "user.registered", 1).await.is_empty() });
    registered.await.expect("the registration made before NATS came was never published");
}

#[tokio::test]
async fn the_gateway_that_carries_a_logout_or_deletion_enforces_it_on_the_very_next_request() {
    let nats = OwnNats::fresh().await;
    let relay = Relay::start(([127, 0, 0, 1], nats.port()).into()).await;
    // A long staleness and a hung link: nothing can come through the
    // bucket, so whatever is refused was learnt from the answer itself.
    let d = deploy(&nats.url(), &relay.nats_url(), "600").await;
    let client = reqwest::Client::new();
    let gw = &d.gateway.url;
    within(Duration::from_secs(30), || ready(&client, gw)).await.expect("the gateway never became ready");
    relay.set(Link::Hang);

    for _ in 0..20 {
        let browser = sign_in(&client, gw).await;
        assert_eq!(api(&client, gw, &browser).await.0, 200);
        let logout = browser.unsafe_request(client.delete(format!("{gw}/auth/logout"))).send().await.unwrap();
        assert_eq!(logout.status(), 204);
        assert!(logout.headers().get("gatehouse-revoked").is_none(), "the hand-over reached the client");
        assert_eq!(api(&client, gw, &browser).await.0, 401, "the next request after a logout was accepted");
    }

    let email = format!("f-{}@example.com", uuid::Uuid::new_v4().simple());
    let creds = json!({"email": email, "password": PASSWORD});
    assert_eq!(client.post(format!("{gw}/auth/register")).json(&creds).send().await.unwrap().status(), 201);
    let login =
        || async { Browser::from_login(&client.post(format!("{gw}/auth/login")).json(&creds).send().await.unwrap()) };
    let (deleting, other) = (login().await, login().await);
    assert_eq!(api(&client, gw, &other).await.0, 200);
    let request = deleting.unsafe_request(client.delete(format!("{gw}/auth/delete")));
    let deleted = request.json(&json!({"password": PASSWORD})).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(api(&client, gw, &other).await.0, 401, "another session of a deleted account was accepted");
}

#[tokio::test]
async fn a_lost_revocation_bucket_is_made_again_and_replayed_before_the_gateway_vouches_again() {
    let nats = OwnNats::fresh().await;
    let url = nats.url();
    let d = deploy(&url, &url, "2").await;
    let client = reqwest::Client::new();
    let gw = &d.gateway.url;
    within(Duration::from_secs(30), || ready(&client, gw)).await.expect("the gateway never became ready");
    // Many entries, so the gateway's watch is far along the old stream.
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    let bucket = js.get_key_value("gatehouse_revocations").await.unwrap();
    let until = auth_core::Clock::now(&auth_core::SystemClock).unix_timestamp() + 600;
    for _ in 0..100 {
        let value = format!("{{\"until\":{until}}}");
        bucket.put(format!("session.{}", uuid::Uuid::new_v4()), value.into()).await.unwrap();
    }
    let browser = sign_in(&client, gw).await;
    within(Duration::from_secs(30), || async { api(&client, gw, &browser).await.0 == 200 }).await.unwrap();

    // NATS loses the bucket (a store wiped, `nats kv rm`): the gateway fails
    // closed, has it made again and vouches again, with no write needed.
    js.delete_stream("KV_gatehouse_revocations").await.unwrap();
    let lost = std::time::Instant::now();
    within(Duration::from_secs(30), || async { !ready(&client, gw).await }).await.expect("vouched for a lost bucket");
    within(Duration::from_secs(60), || async { ready(&client, gw).await })
        .await
        .expect("the gateway never vouched again after the bucket was lost");
    let back = lost.elapsed();
    assert_eq!(api(&client, gw, &browser).await.0, 200);
    // The new bucket's sequences start again at 1, far below the old ones:
    // a logout written to it must still be applied.
    logout_at_auth(&client, &d.auth.url, &browser).await;
    let took = within(Duration::from_secs(30), || async { api(&client, gw, &browser).await.0 == 401 })
        .await
        .expect("the logout on the new bucket never reached the gateway");
    eprintln!(
        "bucket lost: the gateway vouched again {back:?} after; a logout on the new bucket was enforced {took:?} after it"
    );
}
