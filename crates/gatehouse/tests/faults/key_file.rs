//! A key file others may read is refused at start, with the fix in the message.

use super::*;

#[tokio::test]
async fn a_key_file_others_may_read_is_refused_at_start_with_the_fix() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = TempDir::new();
    let server = start(gatehouse(&dir.data())).await;
    assert!(server.stop().await.success());
    let keys = dir.data().join("keys.json");
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o644)).unwrap();
    // No routes to in-process services: the standalone gateway has none.
    let config = dir.0.join("gatehouse.toml");
    std::fs::write(&config, "[gateway]\nauth_service_url = \"http://127.0.0.1:9\"\nroutes = []\n").unwrap();
    for role in [None, Some("auth-service"), Some("gateway")] {
        let mut cmd = gatehouse(&dir.data());
        cmd.arg("--config").arg(&config).args(["--listen", "127.0.0.1:0"]).args(role);
        let out = tokio::time::timeout(Duration::from_secs(30), cmd.output()).await.expect("no exit").unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{role:?} started with a readable key file");
        assert!(stderr.contains(&format!("chmod 600 {}", keys.display())), "{role:?}: {stderr}");
    }
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(start(gatehouse(&dir.data())).await.stop().await.success());
}
