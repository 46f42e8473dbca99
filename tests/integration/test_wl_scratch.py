import grpc, pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
import workload_api_pb as wl
from test_control_plane import agent_config, mesh_spec, mca_pki, mtls_ca_bin  # noqa
from mtls_ca import MtlsCa
from conftest import spiffe_id, inbound_section, free_port
import os

def test_scratch(procs, agents, mtls_ca_bin, mca_pki, tmp_path):
    ca = MtlsCa(procs, mtls_ca_bin, mca_pki, tmp_path / "ca", mesh=mesh_spec(mca_pki))
    sock = tmp_path / "wl.sock"
    cfg = agent_config(ca, mca_pki, tmp_path, "backend",
                       inbound=inbound_section(free_port(), free_port()),
                       workload_api={"socket": str(sock), "allowed_uids": [os.getuid()]})
    a = agents("backend", cfg)
    a.wait_log(msg=None) if False else None
    ch = grpc.insecure_channel("unix:" + str(sock))
    md = [wl.SECURITY_HEADER]
    it = wl.stub(ch, "FetchX509SVID")(wl.X509SVIDRequest(), metadata=md, timeout=10)
    first = next(it)
    print(first.svids[0].spiffe_id, len(first.svids[0].x509_svid), len(first.svids[0].x509_svid_key), len(first.svids[0].bundle))
    assert first.svids[0].spiffe_id == spiffe_id("backend")
    b = next(wl.stub(ch, "FetchX509Bundles")(wl.X509BundlesRequest(), metadata=md, timeout=10))
    print(list(b.bundles.keys()))
    with pytest.raises(grpc.RpcError) as e:
        next(wl.stub(ch, "FetchX509SVID")(wl.X509SVIDRequest(), timeout=5))
    print(e.value.code(), e.value.details())
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    print(a.stderr()[-3000:])
