// Gatehouse's pages: each calls the JSON API with fetch, the session in
// HttpOnly cookies the script never sees, and the CSRF token (the one
// readable cookie) in X-CSRF-Token. No inline script, no build step.
'use strict';

// Plain words for the API's stable error codes, and the field each belongs to.
const MESSAGES = {
  invalid_email: ['email', 'Enter an email address such as name@example.com.'],
  password_too_short: ['password', 'Use at least 8 characters.'],
  password_too_long: ['password', 'Use at most 64 characters.'],
  password_too_common: ['password', 'This password is too common. Choose another one.'],
  password_breached: ['password', 'This password has appeared in a data breach. Choose another one.'],
  email_taken: ['email', 'An account with this email address exists already. Sign in instead.'],
  invalid_credentials: [null, 'The email address or password is wrong.'],
  email_not_verified: [null, 'Confirm your email address first: follow the link we sent you.'],
  wrong_password: ['current_password', 'The password is wrong.'],
  invalid_token: [null, 'This link is invalid or has expired. Ask for a new one.'],
  reauthentication_required: [null, 'For your safety, sign in again first, then try within five minutes.'],
  last_login_method: [null, 'This is your only way to sign in. Set a password or link another provider first.'],
  busy: [null, 'The server is busy. Try again in a moment.'],
  csrf_failed: [null, 'This page is out of date. Reload it and try again.'],
  unauthenticated: [null, 'You are signed out. Sign in again.'],
  invalid_body: [null, 'Fill in every field.'],
  unavailable: [null, 'The service is unavailable. Try again later.'],
};

// What a provider's failed sign-in means, by the code it comes back with.
const PROVIDER_ERRORS = {
  link_required: 'An account with this email address exists. Sign in with its password, then link the provider on your account page.',
  email_required: 'The provider did not share an email address. Allow it, or create an account with a password.',
  email_not_verified: 'The provider has not confirmed your email address. Confirm it there, or sign up with a password.',
  access_denied: 'Signing in was cancelled or refused.',
  provider_unavailable: 'The provider cannot be reached. Try again later.',
  identity_taken: 'That provider account already signs in to another account.',
  reauthentication_required: 'For your safety, sign in again, then link the provider within five minutes.',
  unauthenticated: 'You were signed out before the provider answered. Sign in and try again.',
};

function csrfToken() {
  const prefix = '__Host-csrf_token=';
  const cookie = document.cookie.split('; ').find((c) => c.startsWith(prefix));
  return cookie ? cookie.slice(prefix.length) : '';
}

// Calls the API; a 401 is retried once after refreshing the session.
async function api(method, path, body, retried) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET') headers['X-CSRF-Token'] = csrfToken();
  const response = await fetch(path, {
    method,
    headers,
    credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  // Only a browser holding a session (its CSRF cookie lives as long as the
  // refresh cookie) tries a refresh; a visitor would spend the limit.
  if (response.status === 401 && !retried && csrfToken() && path !== '/auth/login' && path !== '/auth/refresh') {
    const refreshed = await fetch('/auth/refresh', {
      method: 'POST',
      headers: { 'X-CSRF-Token': csrfToken() },
      credentials: 'same-origin',
    });
    if (refreshed.ok) return api(method, path, body, true);
  }
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  return { ok: response.ok, status: response.status, data, retryAfter: response.headers.get('Retry-After') };
}

function $(id) {
  return document.getElementById(id);
}

function show(id, visible) {
  const element = $(id);
  if (element) element.hidden = !visible;
}

function clearErrors(form) {
  for (const field of form.querySelectorAll('[aria-invalid]')) field.removeAttribute('aria-invalid');
  for (const slot of form.querySelectorAll('.error')) slot.textContent = '';
}

// Shows the API's error next to its field (or under the form), in plain words.
function showError(form, result) {
  const code = result.data && result.data.error ? result.data.error.code : 'unavailable';
  let [field, message] = MESSAGES[code] || [null, result.data && result.data.error ? result.data.error.message : 'Something went wrong. Try again.'];
  if (code === 'too_many_requests') {
    const wait = Number(result.retryAfter) || 60;
    message = `Too many attempts. Try again in ${wait} second${wait === 1 ? '' : 's'}.`;
  }
  const input = field && form.elements[field];
  const slot = (input && $(`${form.id}-${field}-error`)) || $(`${form.id}-error`);
  // The words first, so a screen reader reads them with the focused field.
  if (slot) slot.textContent = message;
  if (input) {
    input.setAttribute('aria-invalid', 'true');
    input.focus();
  }
}

// Sends a form's named fields (and `extra`) as JSON; `done` runs on success.
function handle(formId, method, path, done, fields, extra) {
  const form = $(formId);
  if (!form) return;
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    const body = { ...extra };
    for (const name of fields || []) body[name] = form.elements[name].value;
    const button = form.querySelector('button[type=submit]');
    if (button) button.disabled = true;
    try {
      const result = await api(method, path, fields ? body : undefined);
      if (result.ok) {
        await done(result, form);
      } else {
        showError(form, result);
        // The code, for a page that offers more than words for it.
        const code = result.data && result.data.error ? result.data.error.code : '';
        form.dispatchEvent(new CustomEvent('refused', { detail: code }));
      }
    } catch (_) {
      $(`${formId}-error`).textContent = 'The service cannot be reached. Check your connection and try again.';
    } finally {
      if (button) button.disabled = false;
    }
  });
}

// Where to go after signing in: a page of this site only, as the browser
// itself reads the address (it drops tabs and newlines, and reads \\ as /).
function returnTo() {
  const to = new URLSearchParams(location.search).get('return_to') || '/';
  let target;
  try {
    target = new URL(to, location.origin);
  } catch (_) {
    return '/';
  }
  if (target.origin !== location.origin || !to.startsWith('/')) return '/';
  return target.pathname + target.search + target.hash;
}

// The token a mailed link carries after `#token=`, then forgotten by the URL.
function tokenFromLink() {
  const token = new URLSearchParams(location.hash.slice(1)).get('token') || '';
  history.replaceState(null, '', location.pathname);
  return token;
}

// A list item of `text`, with a button (`label`, read out as `spoken`).
function item(text, buttonLabel, onClick, spoken) {
  const li = document.createElement('li');
  li.append(document.createTextNode(text));
  if (buttonLabel) {
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'secondary link';
    button.textContent = buttonLabel;
    if (spoken) button.setAttribute('aria-label', spoken);
    button.addEventListener('click', onClick);
    li.append(button);
  }
  return li;
}

function when(iso) {
  return new Date(iso).toLocaleString();
}

// Signs out; the page left behind shows nothing private when the back
// button brings it back (it is never cached, and asks the API again).
// `alert` is where a failure is told: the session would still stand.
async function signOut(alert) {
  let result;
  try {
    result = await api('DELETE', '/auth/logout');
  } catch (_) {
    result = { ok: false };
  }
  // 401: signed out already.
  if (result.ok || result.status === 401) {
    location.assign('/login');
    return;
  }
  if (alert) alert.textContent = 'Signing out failed; you are still signed in. Try again.';
}

const PAGES = {
  async home() {
    const me = await api('GET', '/auth/me');
    show('status', false);
    if (!me.ok) {
      show('signed-out', true);
      return;
    }
    $('who').textContent = me.data.email;
    show('signed-in', true);
    const render = async () => {
      const notes = await api('GET', '/api/notes');
      const list = $('notes');
      list.replaceChildren();
      for (const note of notes.ok ? notes.data.notes : []) list.append(item(note.body));
      if (!notes.ok) list.append(item('Your notes cannot be loaded right now.'));
    };
    await render();
    handle('add-note', 'POST', '/api/notes', async (_, form) => {
      form.reset();
      await render();
    }, ['body']);
    $('sign-out').addEventListener('submit', (event) => {
      event.preventDefault();
      signOut($('sign-out-error'));
    });
  },

  login() {
    // The provider buttons return where this page would.
    for (const link of document.querySelectorAll('.providers a')) {
      const start = new URL(link.href);
      start.searchParams.set('return_to', returnTo());
      link.href = start.pathname + start.search;
    }
    // A provider's sign-in that failed comes back here with ?error=CODE.
    const failed = new URLSearchParams(location.search).get('error');
    if (failed) {
      $('login-error').textContent = PROVIDER_ERRORS[failed] || 'Signing in with the provider failed. Try again.';
    }
    handle('login', 'POST', '/auth/login', () => location.assign(returnTo()), ['email', 'password']);
    // Refused until confirmed: the link can be sent again from here.
    const form = $('login');
    form.addEventListener('refused', (event) => show('login-resend', event.detail === 'email_not_verified'));
    $('login-resend').addEventListener('click', async () => {
      const result = await api('POST', '/auth/email/resend', { email: form.elements.email.value });
      $('login-error').textContent = result.ok
        ? 'A new confirmation link is on its way.'
        : 'The link could not be sent. Try again in a while.';
    });
  },

  register() {
    handle('register', 'POST', '/auth/register', (_, form) => {
      form.hidden = true;
      show('register-done', true);
    }, ['email', 'password']);
  },

  forgot() {
    handle('forgot', 'POST', '/auth/password/forgot', (_, form) => {
      form.hidden = true;
      show('forgot-done', true);
    }, ['email']);
  },

  reset() {
    const token = tokenFromLink();
    if (!token) $('reset-error').textContent = MESSAGES.invalid_token[1];
    handle('reset', 'POST', '/auth/password/reset', (_, form) => {
      form.hidden = true;
      show('reset-done', true);
    }, ['password'], { token });
  },

  // Confirmed by a click, not on load: a mail scanner that opens links must
  // not confirm an address for whoever registered it.
  verify() {
    const token = tokenFromLink();
    if (!token) $('verify-error').textContent = MESSAGES.invalid_token[1];
    handle('verify', 'POST', '/auth/email/verify', (_, form) => {
      form.hidden = true;
      $('verify-status').textContent = 'Your email address is confirmed.';
    }, [], { token });
  },

  async account() {
    const me = await api('GET', '/auth/me');
    if (!me.ok) {
      location.replace('/login?return_to=/account');
      return;
    }
    show('status', false);
    show('account', true);
    $('email').textContent = me.data.email;
    $('verified').textContent = me.data.email_verified ? 'confirmed' : 'not confirmed';
    show('resend', !me.data.email_verified);
    handle('resend', 'POST', '/auth/email/resend', (_, form) => {
      form.hidden = true;
      show('resend-done', true);
    }, [], { email: me.data.email });
    // Password managers save a new password under this account's name.
    for (const form of [$('change')]) form.elements.username.value = me.data.email;

    const sessions = await api('GET', '/auth/sessions');
    const list = $('sessions');
    for (const s of sessions.ok ? sessions.data.sessions : []) {
      const where = `${s.user_agent || 'Unknown browser'} · ${s.ip || 'unknown address'} · since ${when(s.created_at)}`;
      const failed = () => { $('sessions-error').textContent = 'That session could not be signed out. Try again.'; };
      list.append(item(s.current ? `${where} (this browser)` : where, 'Sign out', async () => {
        if (s.current) return signOut($('sessions-error'));
        const result = await api('DELETE', `/auth/sessions/${s.id}`).catch(() => ({ ok: false }));
        if (result.ok) location.reload();
        else failed();
      }, `Sign out ${where}`));
    }
    $('sign-out-everywhere').addEventListener('submit', async (event) => {
      event.preventDefault();
      // The others first: only once they are out does this one leave.
      const others = await api('DELETE', '/auth/sessions').catch(() => ({ ok: false }));
      if (!others.ok) {
        $('sessions-error').textContent = 'Your other sessions could not be signed out; nothing changed. Try again.';
        return;
      }
      signOut($('sessions-error'));
    });

    const identities = await api('GET', '/auth/me/identities');
    const linked = $('identities');
    const hasPassword = identities.ok ? identities.data.has_password : true;
    for (const identity of identities.ok ? identities.data.identities : []) {
      const named = `${identity.provider}${identity.email ? ` (${identity.email})` : ''}`;
      linked.append(item(named, 'Unlink', async () => {
        const result = await api('DELETE', `/auth/me/identities/${identity.id}`);
        if (result.ok) location.reload();
        else $('identities-error').textContent = (MESSAGES[result.data && result.data.error.code] || [null, 'It could not be unlinked.'])[1];
      }, `Unlink ${named}`));
    }
    if (identities.ok && identities.data.identities.length === 0) linked.append(item('None linked.'));
    // A link that failed at the provider comes back here with ?error=CODE.
    const linkFailed = new URLSearchParams(location.search).get('error');
    if (linkFailed) {
      $('identities-error').textContent = PROVIDER_ERRORS[linkFailed] || 'Linking the provider failed. Try again.';
    }
    for (const button of document.querySelectorAll('[data-link-provider]')) {
      button.addEventListener('click', async () => {
        const provider = button.dataset.linkProvider;
        const result = await api('POST', `/auth/me/identities/${encodeURIComponent(provider)}/link?return_to=/account`);
        if (result.ok) location.assign(result.data.location);
        else $('identities-error').textContent = (MESSAGES[result.data && result.data.error.code] || [null, 'It could not be linked.'])[1];
      });
    }

    show('password-section', hasPassword);
    handle('change', 'POST', '/auth/password/change', (_, form) => {
      form.reset();
      show('change-done', true);
    }, ['current_password', 'password']);

    show('delete-password-field', hasPassword);
    const remove = $('delete');
    remove.addEventListener('submit', async (event) => {
      event.preventDefault();
      clearErrors(remove);
      if (!remove.elements.confirm.checked) {
        $('delete-confirm-error').textContent = 'Tick the box to confirm.';
        remove.elements.confirm.setAttribute('aria-invalid', 'true');
        remove.elements.confirm.focus();
        return;
      }
      const body = hasPassword ? { password: remove.elements.password.value } : {};
      const result = await api('DELETE', '/auth/delete', body);
      if (!result.ok) {
        if (result.data && result.data.error && result.data.error.code === 'wrong_password') {
          $('delete-password-error').textContent = MESSAGES.wrong_password[1];
          remove.elements.password.setAttribute('aria-invalid', 'true');
          remove.elements.password.focus();
          return;
        }
        showError(remove, result);
        if (result.data && result.data.error && result.data.error.code === 'reauthentication_required') {
          // A way back here, signed in anew.
          const again = document.createElement('a');
          again.href = '/login?return_to=/account';
          again.textContent = 'Sign in again';
          $('delete-error').append(' ', again);
        }
        return;
      }
      location.replace('/');
    });
  },
};

// A page brought back from the back-forward cache asks the API again: the
// session may have ended meanwhile, here or on another device.
window.addEventListener('pageshow', (event) => {
  if (event.persisted) location.reload();
});

document.addEventListener('DOMContentLoaded', () => {
  const page = PAGES[document.body.dataset.page];
  if (page) page();
});
