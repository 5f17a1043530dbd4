//! SQLite on a full disk: nothing the service acknowledged may be lost, and
//! once space is back the service works again without a restart.

use std::io::Write as _;

use futures_util::StreamExt as _;
use serde_json::json;

use super::*;

fn on_disk(disk: &PrivateDisk, data: &Path) -> Command {
    let wrapper = disk.wrapper();
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let mut cmd = gatehouse_via(&wrapper, data);
    // Cheap hashing: this test is about storage, not passwords.
    cmd.env("GATEHOUSE_PASSWORDS__HASHING__MEMORY_KIB", "1024").env("GATEHOUSE_PASSWORDS__HASHING__ITERATIONS", "1");
    cmd
}

async fn register(client: &reqwest::Client, url: &str, email: &str) -> (u16, String) {
    let creds = json!({"email": email, "password": PASSWORD});
    let answer = client.post(format!("{url}/auth/register")).json(&creds).send().await.unwrap();
    (answer.status().as_u16(), answer.text().await.unwrap())
}

/// Fills the file system holding `dir` to the last byte.
fn fill(dir: &Path) -> std::fs::File {
    let mut filler = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        if let Err(error) = filler.write_all(&chunk) {
            assert_eq!(error.kind(), std::io::ErrorKind::StorageFull, "{error}");
            break;
        }
    }
    // The last bytes a chunk could not hold.
    while filler.write_all(&[0]).is_ok() {}
    filler
}

#[tokio::test]
async fn a_full_disk_loses_no_acknowledged_account_and_the_service_recovers_by_itself() {
    let dir = TempDir::new();
    let disk = match PrivateDisk::mount(&dir.data(), "8m").await {
        Ok(disk) => disk,
        Err(reason) => return cannot_run(&reason),
    };
    let server = start(on_disk(&disk, &dir.data())).await;
    let client = reqwest::Client::new();
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let email = format!("before{i}@example.com");
        assert_eq!(register(&client, &server.url, &email).await.0, 201);
        acknowledged.push(email);
    }

    let filler = fill(&disk.outside());
    let during: Vec<(String, (u16, String))> = futures_util::stream::iter(0..40)
        .map(|i| {
            let (client, url) = (client.clone(), server.url.clone());
            async move {
                let email = format!("during{i}@example.com");
                let answer = register(&client, &url, &email).await;
                (email, answer)
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    for (email, (status, body)) in during {
        match status {
            201 => acknowledged.push(email),
            503 => assert!(body.contains("\"unavailable\""), "{body}"),
            _ => panic!("a full disk answered {status}: {body}"),
        }
    }
    let full_acknowledged = acknowledged.len() - 5;

    drop(filler);
    std::fs::remove_file(disk.outside().join("filler")).unwrap();
    for i in 0..10 {
        let email = format!("after{i}@example.com");
        let (status, body) = register(&client, &server.url, &email).await;
        assert_eq!(status, 201, "space is back but registration {i} answered {status}: {body}");
        acknowledged.push(email);
    }

    // No shutdown to flush anything: what was acknowledged must already be on disk.
    let Server { mut child, .. } = server;
    child.kill().await.unwrap();
    let server = start(on_disk(&disk, &dir.data())).await;
    let mut lost = Vec::new();
    for email in &acknowledged {
        let creds = json!({"email": email, "password": PASSWORD});
        let login = client.post(format!("{}/auth/login", server.url)).json(&creds).send().await.unwrap();
        if login.status() != 200 {
            lost.push(email.clone());
        }
    }
    eprintln!(
        "disk full: {} accounts acknowledged ({full_acknowledged} while full), {} lost",
        acknowledged.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged accounts lost after a restart: {lost:?}");
    assert!(server.stop().await.success());
}
