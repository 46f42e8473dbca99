"""Python message classes for the SPIFFE Workload API, compiled at test time
by protoc (Debian's protoc-c front end, --descriptor_set_out) from
proto/spiffe/workload.proto, and the method paths and stub factories for
grpcio. Shared by the grpcio Workload API client (tests of mtlsd's server)
and the grpcio server that plays a SPIRE agent (tests of mtlsd's consumer),
so neither shares a line of code with the C side.
"""
import os
import subprocess
import tempfile

from google.protobuf import descriptor_pb2, message_factory

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECURITY_HEADER = ("workload.spiffe.io", "true")


def _load():
    with tempfile.NamedTemporaryFile(suffix=".desc") as out:
        subprocess.run(["protoc-c", "-I" + REPO, "-I/usr/include", "--include_imports",
                        "--descriptor_set_out=" + out.name, "proto/spiffe/workload.proto"],
                       check=True, cwd=REPO)
        fds = descriptor_pb2.FileDescriptorSet.FromString(open(out.name, "rb").read())
    return message_factory.GetMessages(fds.file)


_M = _load()
X509SVIDRequest = _M["X509SVIDRequest"]
X509SVIDResponse = _M["X509SVIDResponse"]
X509BundlesRequest = _M["X509BundlesRequest"]
X509BundlesResponse = _M["X509BundlesResponse"]
JWTSVIDRequest = _M["JWTSVIDRequest"]
JWTSVIDResponse = _M["JWTSVIDResponse"]
JWTBundlesRequest = _M["JWTBundlesRequest"]
JWTBundlesResponse = _M["JWTBundlesResponse"]
ValidateJWTSVIDRequest = _M["ValidateJWTSVIDRequest"]
ValidateJWTSVIDResponse = _M["ValidateJWTSVIDResponse"]

# method name -> (path, request class, response class, server-streaming?)
METHODS = {
    "FetchX509SVID": ("/SpiffeWorkloadAPI/FetchX509SVID", X509SVIDRequest,
                      X509SVIDResponse, True),
    "FetchX509Bundles": ("/SpiffeWorkloadAPI/FetchX509Bundles", X509BundlesRequest,
                         X509BundlesResponse, True),
    "FetchJWTSVID": ("/SpiffeWorkloadAPI/FetchJWTSVID", JWTSVIDRequest, JWTSVIDResponse, False),
    "FetchJWTBundles": ("/SpiffeWorkloadAPI/FetchJWTBundles", JWTBundlesRequest,
                        JWTBundlesResponse, True),
    "ValidateJWTSVID": ("/SpiffeWorkloadAPI/ValidateJWTSVID", ValidateJWTSVIDRequest,
                        ValidateJWTSVIDResponse, False),
}


def stub(channel, method):
    """A grpcio callable for |method| on |channel| (unary or server-streaming)."""
    path, req, resp, streaming = METHODS[method]
    make = channel.unary_stream if streaming else channel.unary_unary
    return make(path, request_serializer=req.SerializeToString,
                response_deserializer=resp.FromString)
