"""mtls-ca takes the service-account token issuer from the API server's
/.well-known/openid-configuration (the stand-in of tests/k8s, over verified
HTTPS with a bearer token) when `tokens.issuer` is not set: tokens with the
discovered issuer are accepted, others refused; until it is known every call
is refused as retryable; a bad answer is logged, counted and retried, and
mtls-ca recovers once the API server answers well."""

import re
import signal
import sys
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization

from conftest import AUDIENCE, DEFAULT_TTL_S, ISSUER, MAX_TTL_S, MESH_POLL_MS, TRUST_DOMAIN, \
    mint_token, wait_until
from test_mtls_ca import create, leaf_of, refused, run_ca, uri_sans
from test_mtls_ca_jwks import jwk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "k8s"))
import fixtures as fx  # noqa: E402
from standin import StandIn  # noqa: E402

FRONTEND = f"spiffe://{TRUST_DOMAIN}/ns/default/sa/frontend"
EKS = "https://oidc.eks.eu-west-1.amazonaws.com/id/0123456789ABCDEF0123456789ABCDEF"
GKE = "https://container.googleapis.com/v1/projects/p/locations/europe-west1/clusters/c"
DISCOVERY = "/.well-known/openid-configuration"
FAILED = f"token issuer: GET {DISCOVERY} failed"
FAILURES_COUNTER = "mtls_ca_token_issuer_reload_failures_total"


@pytest.fixture
def api(tmp_path):
    s = StandIn(tmp_path / "apiserver", extra_args=["--issuer", EKS]).start()
    s.apply("add", "namespaces", fx.namespace("default"))
    yield s
    s.stop()


def issuer_config(pki, api, tmp_path, issuer=None, keys_from_api=False):
    """mtls-ca with the kubernetes: source; no tokens.issuer unless given."""
    token = tmp_path / "k8s-token"
    token.write_text(api.token)
    return (f"trust_domain: {TRUST_DOMAIN}\n"
            "listen: 127.0.0.1:0\n"
            f"tls: {{cert_file: {pki['cp_chain']}, key_file: {pki['cp_key']}}}\n"
            "signer: {cert_file: signer.pem, key_file: signer.key}\n"
            f"roots_file: {pki['root']}\n"
            f"max_cert_ttl_s: {MAX_TTL_S}\n"
            f"default_cert_ttl_s: {DEFAULT_TTL_S}\n"
            "tokens:\n"
            + (f"  issuer: {issuer}\n" if issuer else "")
            + f"  audience: {AUDIENCE}\n"
            + ("" if keys_from_api else "  keys_file: token-keys.pem\n")
            + "  leeway_s: 0\n"
            "  jwks_min_interval_ms: 200\n"
            "mesh_file: mesh.yaml\n"
            f"mesh_poll_ms: {MESH_POLL_MS}\n"
            "access_log: access.log\n"
            "kubernetes:\n"
            f"  server: {api.server}\n"
            f"  token_file: {token}\n"
            f"  ca_file: {api.ca_file}\n"
            "  watch_timeout_s: 5\n")


def issued(ca, msgs, token):
    try:
        return create(ca, msgs, token=token)
    except grpc.RpcError:
        return None


def discovered(issuer):
    return f"token issuer: {issuer} (from the API server's {DISCOVERY})"


def failure_lines(ca):
    """The discovery failures mtls-ca logged, without the time and level."""
    return [line[line.index(FAILED):] for line in ca.stderr().splitlines() if FAILED in line]


def counter(ca, name):
    """The value of |name| in the counters mtls-ca prints on SIGUSR1 (the
    dump asked for now: one more occurrence than before)."""
    before = ca.stderr().count(name + " ")
    ca.signal(signal.SIGUSR1)
    wait_until(lambda: ca.stderr().count(name + " ") > before, f"{name} on SIGUSR1")
    return int(re.findall(re.escape(name) + r" (\d+)", ca.stderr())[-1])


def test_tokens_with_the_discovered_issuer_are_accepted_and_others_refused(start_ca, api, msgs,
                                                                           pki, tmp_path):
    ca = start_ca(config_text=issuer_config(pki, api, tmp_path))
    wait_until(lambda: discovered(EKS) in ca.stderr(), "the discovered issuer")
    resp = create(ca, msgs, token=mint_token(pki["token_key"], iss=EKS))
    assert uri_sans(leaf_of(resp)) == [FRONTEND]

    # The issuer conftest's other suites use is not this cluster's.
    code, details = refused(ca, msgs, token=mint_token(pki["token_key"], iss=ISSUER))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert details.startswith(f'wrong issuer: issuer "{ISSUER}" is not the expected one'), details
    assert api.stats()["discovery_requests"] >= 1


def test_before_the_issuer_is_discovered_calls_are_refused_as_retryable(start_ca, api, msgs, pki,
                                                                        tmp_path):
    api.discovery(status=503)
    ca = start_ca(config_text=issuer_config(pki, api, tmp_path))
    wait_until(lambda: FAILED in ca.stderr(), "the refused discovery")
    assert f"{FAILED}, no issuer discovered yet: HTTP status 503; retrying in" in ca.stderr()
    token = mint_token(pki["token_key"], iss=EKS)
    code, details = refused(ca, msgs, token=token)
    assert code == grpc.StatusCode.UNAVAILABLE
    assert details == ("token issuer not known yet (discovering it from the API server's "
                       f"{DISCOVERY}); retry")
    assert ca.access_lines()[-1]["reason"] == "no_issuer"
    # Not even a token whose issuer is the one that will be discovered.
    assert ca.alive()

    api.discovery(issuer=EKS)
    resp = wait_until(lambda: issued(ca, msgs, token), "a certificate once discovery answers")
    assert uri_sans(leaf_of(resp)) == [FRONTEND]
    assert discovered(EKS) in ca.stderr()


BAD_ANSWERS = [
    pytest.param({"status": 200, "body": "<html>502 Bad Gateway</html>"},
                 "discovery document is not JSON", id="not-json"),
    pytest.param({"status": 200, "body": '{"jwks_uri": "https://127.0.0.1/openid/v1/jwks"}'},
                 'discovery document has no "issuer"', id="no-issuer"),
    pytest.param({"status": 200, "body": '{"issuer": "http://kubernetes.default.svc"}'},
                 'issuer "http://kubernetes.default.svc" is not an https:// URL', id="http-issuer"),
    pytest.param({"status": 200, "body": '{"issuer": "https://a.example", "pad": "'
                  + " " * 70000 + '"}'},
                 "the document is larger than 65536 bytes", id="oversized"),
    pytest.param({"status": 500}, "HTTP status 500", id="http-500"),
    pytest.param({"status": 404},
                 "HTTP status 404 (the API server serves it only when its "
                 "--service-account-issuer is an https URL; set tokens.issuer)", id="http-404"),
    pytest.param({"status": 403},
                 "HTTP status 403 (mtls-ca needs the system:service-account-issuer-discovery "
                 "ClusterRole)", id="http-403"),
]


@pytest.mark.parametrize("answer,expected", BAD_ANSWERS)
def test_a_bad_discovery_answer_is_logged_counted_retried_and_recovered_from(
        start_ca, api, msgs, pki, tmp_path, answer, expected):
    api.discovery(**answer)
    ca = start_ca(config_text=issuer_config(pki, api, tmp_path))
    wait_until(lambda: FAILED in ca.stderr(), "the refused discovery")
    assert failure_lines(ca)[0].startswith(f"{FAILED}, no issuer discovered yet: {expected}")
    assert failure_lines(ca)[0].endswith("; retrying in 1.0 s")
    assert counter(ca, FAILURES_COUNTER) >= 1
    # Retried with backoff, not given up on.
    wait_until(lambda: ca.stderr().count(FAILED) >= 2, "a second attempt")
    assert failure_lines(ca)[1].startswith(f"{FAILED}, no issuer discovered yet: {expected}")
    assert failure_lines(ca)[1].endswith("; retrying in 2.0 s")  # backing off
    assert api.stats()["discovery_requests"] >= 2
    code, _ = refused(ca, msgs, token=mint_token(pki["token_key"], iss=EKS))
    assert code == grpc.StatusCode.UNAVAILABLE

    api.discovery(issuer=EKS)
    token = mint_token(pki["token_key"], iss=EKS)
    wait_until(lambda: issued(ca, msgs, token), "a certificate once discovery answers well")
    assert discovered(EKS) in ca.stderr()
    assert counter(ca, "mtls_ca_token_issuer_reloads_total") >= 1


def test_an_unreachable_api_server_is_retried_until_it_answers(start_ca, api, msgs, pki, tmp_path):
    config = issuer_config(pki, api, tmp_path)
    api.stop()  # its port stays known: start() binds it again below
    ca = start_ca(config_text=config)
    wait_until(lambda: FAILED in ca.stderr(), "the failed discovery")
    assert f"{FAILED}, no issuer discovered yet: " in ca.stderr()
    code, _ = refused(ca, msgs, token=mint_token(pki["token_key"], iss=EKS))
    assert code == grpc.StatusCode.UNAVAILABLE

    api.start()
    token = mint_token(pki["token_key"], iss=EKS)
    wait_until(lambda: issued(ca, msgs, token), "a certificate once the API answers")


def test_a_bad_answer_later_keeps_the_issuer_discovered_before(start_ca, api, msgs, pki, tmp_path):
    ca = start_ca(config_text=issuer_config(pki, api, tmp_path))
    wait_until(lambda: discovered(EKS) in ca.stderr(), "the discovered issuer")
    api.discovery(status=200, body="{}")
    before = api.stats()["discovery_requests"]
    ca.signal(signal.SIGHUP)  # asks the API server again
    wait_until(lambda: f"{FAILED}, the issuer discovered before stays: discovery document has "
               'no "issuer"' in ca.stderr(), "the refused document")
    assert api.stats()["discovery_requests"] > before
    assert issued(ca, msgs, mint_token(pki["token_key"], iss=EKS)) is not None


def test_an_issuer_changed_on_the_api_server_is_followed(start_ca, api, msgs, pki, tmp_path):
    ca = start_ca(config_text=issuer_config(pki, api, tmp_path))
    wait_until(lambda: discovered(EKS) in ca.stderr(), "the discovered issuer")
    # The cluster is reconfigured: its tokens name the new issuer. The first
    # such token (its signature verified) makes mtls-ca ask again.
    api.discovery(issuer=GKE)
    token = mint_token(pki["token_key"], iss=GKE)
    wait_until(lambda: issued(ca, msgs, token), "the new issuer to be discovered")
    assert discovered(GKE) in ca.stderr()
    code, details = refused(ca, msgs, token=mint_token(pki["token_key"], iss=EKS))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "wrong issuer" in details


def test_an_explicit_issuer_wins_and_a_different_discovered_one_is_warned(start_ca, api, msgs, pki,
                                                                         tmp_path):
    signer = serialization.load_pem_private_key(pki["token_key"], None)
    api.admin("/admin/jwks", {"keys": [jwk(signer.public_key())]})
    ca = start_ca(config_text=issuer_config(pki, api, tmp_path, issuer=ISSUER, keys_from_api=True))
    warning = (f'token issuer: tokens.issuer is "{ISSUER}" but the API server\'s {DISCOVERY} says '
               f'"{EKS}"; keeping tokens.issuer')
    wait_until(lambda: warning in ca.stderr(), "the warning naming both issuers")
    token = mint_token(pki["token_key"], iss=ISSUER)
    wait_until(lambda: issued(ca, msgs, token), "the API server's keys")
    code, _ = refused(ca, msgs, token=mint_token(pki["token_key"], iss=EKS))
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_check_config_needs_no_issuer_with_kubernetes_and_names_it_without(start_ca, api, pki,
                                                                        tmp_path):
    ca = start_ca(config_text=issuer_config(pki, api, tmp_path))
    p = run_ca("--check-config", ca.config)
    assert p.returncode == 0, p.stderr
    text = ca.config.read_text()
    without = ca.dir / "without-kubernetes.yaml"
    without.write_text(text[:text.index("kubernetes:\n")])
    p = run_ca("--check-config", without)
    assert p.returncode == 1
    assert f"{without}:1: 'tokens' needs 'issuer' (with 'kubernetes', it may come from the API " \
        "server's /.well-known/openid-configuration instead)" in p.stderr
