// A real OpenID Provider for Gatehouse's tests: panva's oidc-provider with
// one static client (`gatehouse` / `test-secret`, redirect URI from
// REDIRECT_URI) and accounts made up from the login_hint, so no human
// interaction is needed: login_hint `alice@example.com` signs in subject
// `alice@example.com` with that email verified; `unverified+bob@example.com`
// signs in with bob@example.com unverified. Prints `ready <issuer>`.
import http from 'node:http';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT || 0);
const redirect = process.env.REDIRECT_URI;
const server = http.createServer();
await new Promise((r) => server.listen(port, '127.0.0.1', r));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'gatehouse',
    client_secret: 'test-secret',
    redirect_uris: [redirect],
    grant_types: ['authorization_code'],
    response_types: ['code'],
  }],
  pkce: { required: () => true },
  claims: { openid: ['sub'], email: ['email', 'email_verified'] },
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, email: id.replace(/^unverified\+/, ''), email_verified: !id.startsWith('unverified+') }),
  }),
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  features: { devInteractions: { enabled: false } },
  cookies: { keys: ['test-only-cookie-key'] },
});
provider.proxy = false;

const callback = provider.callback();
server.on('request', async (req, res) => {
  const match = req.url.match(/^\/interaction\/([^/?]+)/);
  if (!match) return callback(req, res);
  try {
    const details = await provider.interactionDetails(req, res);
    const accountId = details.params.login_hint || 'alice@example.com';
    let result;
    if (details.prompt.name === 'login') {
      result = { login: { accountId } };
    } else {
      const grant = details.grantId ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
      grant.addOIDCScope(details.params.scope);
      result = { consent: { grantId: await grant.save() } };
    }
    await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: true });
  } catch (e) {
    res.statusCode = 500;
    res.end(String(e));
  }
});
console.log(`ready ${issuer}`);
