"""An independent Workload API client for interop tests: gRPC C-core and protobuf code generated
by grpc_tools from proto/spiffe/workload/workload.proto, DER parsed by pyca/cryptography.

Usage: python3 python_workload_client.py STUBS_DIR SOCKET_PATH AUDIENCE
Prints one JSON object with what it observed; exits non-zero only on unexpected errors.
"""
import json
import sys

stubs, socket_path, audience = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, stubs)

import grpc  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.x509.oid import ExtensionOID  # noqa: E402
from spiffe.workload import workload_pb2, workload_pb2_grpc  # noqa: E402

HEADER = (("workload.spiffe.io", "true"),)


def split_der(data):
    """Concatenated DER certificates -> list of cryptography certificates."""
    certs, offset = [], 0
    while offset < len(data):
        first = data[offset + 1]
        if first < 0x80:
            length, header = first, 2
        else:
            count = first & 0x7F
            length = int.from_bytes(data[offset + 2 : offset + 2 + count], "big")
            header = 2 + count
        end = offset + header + length
        certs.append(x509.load_der_x509_certificate(data[offset:end]))
        offset = end
    return certs


def status_of(call):
    try:
        call()
        return "OK"
    except grpc.RpcError as err:
        return err.code().name


def main():
    out = {}
    with grpc.insecure_channel("unix:" + socket_path) as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)

        out["no_header"] = status_of(lambda: next(stub.FetchX509SVID(workload_pb2.X509SVIDRequest())))
        out["wit"] = status_of(lambda: next(stub.FetchWITSVID(workload_pb2.WITSVIDRequest(), metadata=HEADER)))
        out["jwt_no_audience"] = status_of(lambda: stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(), metadata=HEADER))

        stream = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER)
        first = next(stream)
        stream.cancel()
        svids = []
        for svid in first.svids:
            chain = split_der(svid.x509_svid)
            leaf = chain[0]
            key = serialization.load_der_private_key(svid.x509_svid_key, password=None)
            pub = lambda k: k.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            sans = leaf.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
            uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
            basic = leaf.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS)
            usage = leaf.extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE)
            bundle = split_der(svid.bundle)
            svids.append({
                "spiffe_id": svid.spiffe_id,
                "uris": uris,
                "key_matches_leaf": pub(key.public_key()) == pub(leaf.public_key()),
                "leaf_is_ca": basic.value.ca,
                "key_usage_critical": usage.critical,
                "digital_signature": usage.value.digital_signature,
                "key_cert_sign": usage.value.key_cert_sign,
                "chain_length": len(chain),
                "intermediates_are_ca": all(c.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value.ca for c in chain[1:]),
                "bundle_size": len(bundle),
            })
        out["svids"] = svids
        out["crl_count"] = len(first.crl)
        out["federated_keys"] = sorted(first.federated_bundles.keys())

        bundles = next(stub.FetchJWTBundles(workload_pb2.JWTBundlesRequest(), metadata=HEADER))
        out["jwt_bundle_keys"] = sorted(bundles.bundles.keys())
        jwks = {k: json.loads(v) for k, v in bundles.bundles.items()}
        out["every_jwk_has_kid"] = all("kid" in key for s in jwks.values() for key in s["keys"])

        jwt = stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=[audience]), metadata=HEADER)
        token = jwt.svids[0].svid
        validated = stub.ValidateJWTSVID(workload_pb2.ValidateJWTSVIDRequest(audience=audience, svid=token), metadata=HEADER)
        out["validated_spiffe_id"] = validated.spiffe_id
        out["validated_aud"] = list(validated.claims.fields["aud"].list_value.values[0].string_value for _ in [0])
        out["validate_wrong_audience"] = status_of(
            lambda: stub.ValidateJWTSVID(workload_pb2.ValidateJWTSVIDRequest(audience="https://other", svid=token), metadata=HEADER)
        )
    print(json.dumps(out))


main()
