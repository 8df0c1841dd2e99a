// Verifies a token agentguard minted with panva's `jose`, as a Node tool
// server would: the JWKS (a file, as `agentguard token jwks` prints it), the
// algorithms the server allows, its issuer and its audience.
//
//   node verify_token.mjs JWKS_FILE TOKEN ISSUER AUDIENCE ALG
//
// Prints the header and the claims as JSON and exits 0 when the token
// verifies; prints why and exits 1 when it does not.
import { readFileSync } from "node:fs";
import { createLocalJWKSet, jwtVerify } from "jose";

const [jwksFile, token, issuer, audience, alg] = process.argv.slice(2);
const keys = createLocalJWKSet(JSON.parse(readFileSync(jwksFile, "utf8")));
try {
  const { payload, protectedHeader } = await jwtVerify(token, keys, {
    issuer,
    audience,
    algorithms: [alg],
  });
  console.log(JSON.stringify({ header: protectedHeader, claims: payload }));
} catch (e) {
  console.log(`refused: ${e.code ?? ""} ${e.message}`);
  process.exit(1);
}
