//! The hosted pages in a real browser (Debian's Chromium, headless, driven
//! over WebDriver) against `gatehouse up`, mail through a real SMTP server.
//! Screenshots of each page go to `target/browser-screenshots/`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../support/mod.rs"]
mod support;
mod webdriver;

use std::time::Duration;

use auth_service::testing::{OidcProvider, SmtpSink};
use support::*;
use webdriver::Browser;

const NEW_PASSWORD: &str = "a brand new passphrase for the account";

/// A headless Chromium and `gatehouse up` on a port of its own (its
/// public URL that port), its mail to a real SMTP server.
struct Rig {
    browser: Browser,
    server: Server,
    smtp: SmtpSink,
    url: String,
    _dir: TempDir,
}

impl Rig {
    /// `None` where browser tests cannot run (see [`webdriver::available`]).
    async fn start() -> Option<Self> {
        Self::start_at(free_port(), |_, _| {}).await
    }

    /// On `port`, the command made ready by `configure` (with the test's
    /// directory) first.
    async fn start_at(port: u16, configure: impl FnOnce(&mut tokio::process::Command, &TempDir)) -> Option<Self> {
        if !webdriver::available() {
            return None;
        }
        let smtp = SmtpSink::start();
        let dir = TempDir::new();
        let url = format!("http://127.0.0.1:{port}");
        let mut cmd = gatehouse(&dir.data());
        cmd.env("GATEHOUSE_PUBLIC_URL", &url).env("GATEHOUSE_MAIL__SMTP_URL", smtp.url());
        configure(&mut cmd, &dir);
        let server = start_listening(cmd, &format!("127.0.0.1:{port}")).await;
        Some(Self { browser: Browser::start().await, server, smtp, url, _dir: dir })
    }

    /// Closes the browser; the server must stop cleanly.
    async fn finish(self) {
        self.browser.quit().await;
        assert!(self.server.stop().await.success());
    }
}

/// The `n`-th message to `email`'s link to `page`, as the browser follows it.
async fn mailed_link(smtp: &SmtpSink, url: &str, email: &str, n: usize, page: &str) -> String {
    let message = smtp.wait_for(email, n, Duration::from_secs(30)).await.swap_remove(n - 1);
    message.link(&format!("{url}{page}")).unwrap_or_else(|| panic!("no {page} link in {}", message.text))
}

/// Signs `email` up with [`PASSWORD`] on the register page.
async fn sign_up(browser: &Browser, url: &str, email: &str) {
    browser.goto(&format!("{url}/register")).await;
    browser.type_into("#register-email", email).await;
    browser.type_into("#register-password", PASSWORD).await;
    browser.click("#register button[type=submit]").await;
    browser.wait_for_text("#register-done", "Account created").await;
}

async fn sign_in(browser: &Browser, url: &str, email: &str, password: &str) {
    browser.goto(&format!("{url}/login")).await;
    browser.type_into("#login-email", email).await;
    browser.type_into("#login-password", password).await;
    browser.click("#login button[type=submit]").await;
}

#[tokio::test]
async fn a_new_user_signs_up_confirms_signs_in_keeps_a_note_resets_the_password_and_leaves() {
    let Some(rig) = Rig::start().await else { return };
    let (browser, smtp, url) = (&rig.browser, &rig.smtp, rig.url.clone());
    let email = format!("browser-{}@example.com", uuid::Uuid::new_v4().simple());

    // Sign up; a too-short password is explained next to its field first.
    browser.goto(&format!("{url}/register")).await;
    browser.screenshot("register").await;
    browser.type_into("#register-email", &email).await;
    browser.type_into("#register-password", "short").await;
    browser.click("#register button[type=submit]").await;
    browser.wait_for_text("#register-password-error", "at least 8 characters").await;
    browser.type_into("#register-password", PASSWORD).await;
    browser.click("#register button[type=submit]").await;
    browser.wait_for_text("#register-done", "Account created").await;

    // Confirm the address by the mailed link.
    browser.goto(&mailed_link(smtp, &url, &email, 1, "/verify-email").await).await;
    browser.screenshot("verify-email").await;
    browser.click("#verify button[type=submit]").await;
    browser.wait_for_text("#verify-status", "confirmed").await;
    assert!(!browser.url().await.contains("token="), "the token leaves the address bar");

    // A wrong password is told in plain words; the right one signs in.
    sign_in(browser, &url, &email, "not the password at all").await;
    browser.wait_for_text("#login-error", "email address or password is wrong").await;
    browser.screenshot("login").await;
    sign_in(browser, &url, &email, PASSWORD).await;
    browser.wait_for_path("/").await;
    browser.wait_for_text("#who", &email).await;

    // A note, kept by the example service behind the gateway.
    browser.type_into("#note-body", "remember the milk").await;
    browser.click("#add-note button[type=submit]").await;
    browser.wait_for_text("#notes", "remember the milk").await;
    browser.screenshot("home").await;

    // The script sees the CSRF token, never the session's tokens.
    let cookies = browser.run("return document.cookie").await;
    let cookies = cookies.as_str().unwrap();
    assert!(cookies.contains("__Host-csrf_token="), "{cookies}");
    assert!(!cookies.contains("access_token") && !cookies.contains("refresh_token"), "{cookies}");
    assert!(!cookies.contains("eyJ"), "{cookies}");

    browser.goto(&format!("{url}/account")).await;
    browser.wait_for_text("#email", &email).await;
    browser.wait_for_text("#verified", "confirmed").await;
    browser.wait_for_text("#sessions", "this browser").await;
    browser.screenshot("account").await;

    // Signed out, the back button brings nothing private back.
    browser.goto(&format!("{url}/")).await;
    browser.wait_for_text("#who", &email).await;
    browser.click("#sign-out button").await;
    browser.wait_for_path("/login").await;
    browser.back().await;
    browser.wait_for_text("#signed-out", "Sign in to see your notes").await;
    let page = browser.run("return document.body.innerText").await;
    let page = page.as_str().unwrap();
    assert!(!page.contains(&email) && !page.contains("remember the milk"), "{page}");

    // Forgotten password: a mailed link sets a new one.
    browser.goto(&format!("{url}/forgot-password")).await;
    browser.type_into("#forgot-email", &email).await;
    browser.click("#forgot button[type=submit]").await;
    browser.wait_for_text("#forgot-done", "on its way").await;
    browser.goto(&mailed_link(smtp, &url, &email, 2, "/reset-password").await).await;
    browser.screenshot("reset-password").await;
    browser.type_into("#reset-password", NEW_PASSWORD).await;
    browser.click("#reset button[type=submit]").await;
    browser.wait_for_text("#reset-done", "Your password is set").await;
    sign_in(browser, &url, &email, PASSWORD).await;
    browser.wait_for_text("#login-error", "wrong").await;
    sign_in(browser, &url, &email, NEW_PASSWORD).await;
    browser.wait_for_text("#who", &email).await;
    browser.wait_for_text("#notes", "remember the milk").await;

    // Delete the account: confirmation first, then it is gone.
    browser.goto(&format!("{url}/account")).await;
    browser.wait_for_text("#email", &email).await;
    browser.type_into("#delete-password", NEW_PASSWORD).await;
    browser.click("#delete button[type=submit]").await;
    browser.wait_for_text("#delete-confirm-error", "Tick the box").await;
    browser.click("#delete-confirm").await;
    browser.click("#delete button[type=submit]").await;
    browser.wait_for_text("#signed-out", "Sign in").await;
    sign_in(browser, &url, &email, NEW_PASSWORD).await;
    browser.wait_for_text("#login-error", "wrong").await;

    rig.finish().await;
}

/// Serves `html` to every request on a port of its own, as another site.
async fn other_site(html: String) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = listener.accept().await {
            let html = html.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{html}",
                    html.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn a_form_on_another_site_cannot_act_for_a_signed_in_user() {
    let Some(rig) = Rig::start().await else { return };
    let (browser, url) = (&rig.browser, rig.url.clone());
    let email = format!("victim-{}@example.com", uuid::Uuid::new_v4().simple());
    sign_up(browser, &url, &email).await;
    sign_in(browser, &url, &email, PASSWORD).await;
    browser.wait_for_text("#who", &email).await;

    browser.type_into("#note-body", "the owner's own note").await;
    browser.click("#add-note button[type=submit]").await;
    browser.wait_for_text("#notes", "the owner's own note").await;

    // `text/plain` forms can send a JSON-looking body. The attacker's page
    // is on another site (localhost, not 127.0.0.1: the browser sends no
    // cookie) and on the same site at another port (the cookies go along;
    // the Origin is refused).
    let attack = format!(
        "<!doctype html><form id=\"attack\" method=\"POST\" enctype=\"text/plain\" action=\"{url}/api/notes\">\
         <input name='{{\"body\":\"planted by another site\",\"x\":\"' value='\"}}'>\
         <button type=\"submit\">Win a prize</button></form>\
         <form id=\"change\" method=\"POST\" enctype=\"text/plain\" action=\"{url}/auth/password/change\">\
         <input name='{{\"current_password\":\"{PASSWORD}\",\"password\":\"taken over by the attacker\",\"x\":\"' value='\"}}'>\
         <button type=\"submit\">Claim it</button></form>"
    );
    let port = other_site(attack).await;
    for (host, expected) in
        [("localhost", ["unauthenticated", "csrf_failed"]), ("127.0.0.1", ["csrf_failed", "csrf_failed"])]
    {
        for (form, path) in [("attack", "/api/notes"), ("change", "/auth/password/change")] {
            browser.goto(&format!("http://{host}:{port}/")).await;
            browser.click(&format!("#{form} button")).await;
            browser.wait_for_path(path).await;
            let answer = browser.run("return document.body.innerText").await;
            let answer: serde_json::Value = serde_json::from_str(answer.as_str().unwrap_or_default()).unwrap();
            let code = answer["error"]["code"].as_str().unwrap_or_default().to_owned();
            assert!(expected.contains(&code.as_str()), "{host} {form}: {answer}");
        }
    }

    // Nothing happened: no note, and the password is the owner's still.
    browser.goto(&format!("{url}/")).await;
    browser.wait_for_text("#notes", "the owner's own note").await;
    let notes = browser.text("#notes").await;
    assert!(!notes.contains("planted"), "{notes}");
    browser.click("#sign-out button").await;
    browser.wait_for_path("/login").await;
    sign_in(browser, &url, &email, PASSWORD).await;
    browser.wait_for_text("#who", &email).await;

    rig.finish().await;
}

#[tokio::test]
async fn a_user_signs_in_with_an_openid_provider_by_its_button_and_sees_it_linked() {
    let port = free_port();
    let provider = OidcProvider::start(&format!("http://127.0.0.1:{port}/auth/oauth/corp/callback"));
    let rig = Rig::start_at(port, |cmd, dir| {
        let config = dir.0.join("gatehouse.toml");
        let toml = format!(
            "[oauth.providers.corp]\nkind = \"oidc\"\nissuer = \"{}\"\nclient_id = \"gatehouse\"\n",
            provider.issuer
        );
        std::fs::write(&config, toml).unwrap();
        cmd.arg("--config").arg(&config).env("GATEHOUSE_OAUTH__PROVIDERS__CORP__CLIENT_SECRET", "test-secret");
    });
    let Some(rig) = rig.await else { return };
    let (browser, url) = (&rig.browser, rig.url.clone());

    // The provider's own pages answer at once (the account comes from the
    // login hint, alice@example.com without one).
    // Sent here from the account page, and back there once signed in.
    browser.goto(&format!("{url}/login?return_to=/account")).await;
    browser.wait_for_text(".providers", "Continue with Corp").await;
    browser.screenshot("login-with-provider").await;
    browser.click(".providers a").await;
    browser.wait_for_path("/account").await;
    browser.wait_for_text("#email", "alice@example.com").await;
    browser.wait_for_text("#identities", "corp (alice@example.com)").await;
    browser.wait_for_text("#verified", "confirmed").await;
    // No password: neither its change nor its field on deletion is offered.
    let hidden = browser
        .run("return [document.getElementById('password-section').hidden, document.getElementById('delete-password-field').hidden]")
        .await;
    assert_eq!(hidden, serde_json::json!([true, true]));
    browser.screenshot("account-with-provider").await;

    rig.finish().await;
}

#[tokio::test]
async fn every_page_labels_its_fields_helps_password_managers_and_fits_a_phone() {
    let Some(rig) = Rig::start().await else { return };
    let (browser, url) = (&rig.browser, rig.url.clone());
    browser.resize(390, 844).await;
    // Every visible field: a label naming it, an autocomplete hint for
    // addresses and passwords; and nothing wider than the screen.
    let check = r#"
        const problems = [];
        for (const field of document.querySelectorAll('input, textarea')) {
            if (field.type === 'hidden' || field.hidden || field.closest('[hidden]')) continue;
            if (!field.labels || field.labels.length === 0) problems.push(`${field.id || field.name}: no label`);
            const wants = { email: ['username', 'email'], password: ['current-password', 'new-password'] }[field.type];
            if (wants && !wants.includes(field.autocomplete)) problems.push(`${field.id}: autocomplete ${field.autocomplete}`);
        }
        if (window.innerWidth > 400) problems.push(`not a phone: ${window.innerWidth} px`);
        if (document.documentElement.scrollWidth > window.innerWidth) problems.push('wider than the screen');
        if (!document.querySelector('h1')) problems.push('no heading');
        return problems;
    "#;
    for (path, ready) in [
        ("/", "#signed-out"),
        ("/login", "#login"),
        ("/register", "#register"),
        ("/forgot-password", "#forgot"),
        ("/reset-password#token=x", "#reset"),
        ("/verify-email#token=x", "#verify"),
    ] {
        browser.goto(&format!("{url}{path}")).await;
        browser.find(ready).await;
        let problems = browser.run(check).await;
        assert_eq!(problems, serde_json::json!([]), "{path}");
        let name = path.trim_start_matches('/').split('#').next().unwrap_or_default();
        browser.screenshot(&format!("phone-{}", if name.is_empty() { "home" } else { name })).await;
    }
    browser.click("#verify button[type=submit]").await;
    browser.wait_for_text("#verify-error", "invalid or has expired").await;

    // The account page, signed in.
    let email = format!("phone-{}@example.com", uuid::Uuid::new_v4().simple());
    sign_up(browser, &url, &email).await;
    sign_in(browser, &url, &email, PASSWORD).await;
    browser.wait_for_text("#who", &email).await;
    browser.goto(&format!("{url}/account")).await;
    browser.wait_for_text("#email", &email).await;
    assert_eq!(browser.run(check).await, serde_json::json!([]), "/account");
    browser.screenshot("phone-account").await;

    rig.finish().await;
}

#[tokio::test]
async fn a_keyboard_alone_signs_up_and_in_in_the_order_the_fields_are_read() {
    const TAB: &str = "\u{E004}";
    const ENTER: &str = "\u{E007}";
    let Some(rig) = Rig::start().await else { return };
    let (browser, url) = (&rig.browser, rig.url.clone());
    let email = format!("keys-{}@example.com", uuid::Uuid::new_v4().simple());

    browser.goto(&format!("{url}/register")).await;
    browser.find("#register").await;
    let mut order = Vec::new();
    for _ in 0..4 {
        browser.press(TAB).await;
        order.push(browser.focused().await);
    }
    assert_eq!(order, ["Gatehouse", "register-email", "register-password", "Create account"]);
    // From the address: type, Tab, type, Enter submits.
    browser.run("document.getElementById('register-email').focus()").await;
    browser.press(&format!("{email}{TAB}{PASSWORD}{ENTER}")).await;
    browser.wait_for_text("#register-done", "Account created").await;

    browser.goto(&format!("{url}/login")).await;
    browser.find("#login").await;
    browser.press(&format!("{TAB}{TAB}{email}{TAB}wrong password here{ENTER}")).await;
    // The error is announced, and the focus stays on the password.
    browser.wait_for_text("#login-error", "wrong").await;
    assert_eq!(browser.focused().await, "login-password");
    browser.run("document.getElementById('login-password').select()").await;
    browser.press(&format!("{PASSWORD}{ENTER}")).await;
    browser.wait_for_text("#who", &email).await;

    rig.finish().await;
}

#[tokio::test]
async fn a_user_refused_until_confirmed_gets_a_new_link_from_the_sign_in_page() {
    let rig = Rig::start_at(free_port(), |cmd, _| {
        cmd.env("GATEHOUSE_REGISTRATION__REQUIRE_VERIFIED_EMAIL", "true");
    });
    let Some(rig) = rig.await else { return };
    let (browser, smtp, url) = (&rig.browser, &rig.smtp, rig.url.clone());
    let email = format!("late-{}@example.com", uuid::Uuid::new_v4().simple());
    sign_up(browser, &url, &email).await;

    sign_in(browser, &url, &email, PASSWORD).await;
    browser.wait_for_text("#login-error", "Confirm your email address first").await;
    browser.click("#login-resend").await;
    browser.wait_for_text("#login-error", "on its way").await;
    // The second message is the new link; it confirms, and then sign-in works.
    browser.goto(&mailed_link(smtp, &url, &email, 2, "/verify-email").await).await;
    browser.click("#verify button[type=submit]").await;
    browser.wait_for_text("#verify-status", "confirmed").await;
    sign_in(browser, &url, &email, PASSWORD).await;
    browser.wait_for_text("#who", &email).await;

    rig.finish().await;
}
