// Istio conformance at L4: for Istio objects as a cluster holds them, a
// destination workload and one connection (peer identity or plaintext,
// peer address, destination address and port), the decision and the rule
// that made it must be the ones Istio documents for AuthorizationPolicy
// (DENY first, then ALLOW; no policy allows; ztunnel's handling of fields
// that need HTTP). The cases are written from Istio's reference and
// concept pages, in our words.
//
// Each case runs the real pipeline: mt_istio_compile (mtls-ca) -> the
// mesh.proto Policy -> mt_policy_from_proto -> mt_policy_evaluate (the
// agent), with real socket addresses.
//
// Deciding rules: "<ns>/<name>[<i>]" (that rule), "no-allow-rule-matched"
// (ALLOW policies select the workload, none of their rules matched),
// "default" (nothing decided: allowed), "<ns>/<name>" (a refused policy
// failing closed).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "agent/policy.h"
#include "agent/policy_proto.h"
#include "controlplane/istio_policy.h"
#include "tests/controlplane/istio_fixture.h"

using mt_test::AuthorizationPolicy;
using mt_test::IstioObject;
using mt_test::Workload;
using mt_test::WorkloadView;

namespace {

// ---- who connects ----

struct Peer {
  const char *id; /* verified SPIFFE ID; nullptr: plaintext */
  const char *ip;
};

const Peer kFrontend = {"spiffe://cluster.local/ns/shop/sa/frontend", "10.0.1.5"};
const Peer kGateway = {"spiffe://cluster.local/ns/web/sa/gateway", "10.0.2.7"};
// The same service account name in another trust domain.
const Peer kPartner = {"spiffe://partner.example/ns/shop/sa/frontend", "10.0.3.3"};
const Peer kPlaintext = {nullptr, "10.0.9.9"};
const Peer kPlaintextInFrontendSubnet = {nullptr, "10.0.1.9"};
const Peer kFrontendOutsideCluster = {"spiffe://cluster.local/ns/shop/sa/frontend", "192.168.1.1"};
const Peer kFrontendV6 = {"spiffe://cluster.local/ns/shop/sa/frontend", "fd00:1::5"};
const Peer kGatewayV6 = {"spiffe://cluster.local/ns/web/sa/gateway", "fd00:2::5"};

// ---- where it connects ----

struct Destination {
  Workload workload;
  const char *ip;
};

const Destination kBackend = {{"shop", {{"app", "backend"}, {"version", "v1"}}, {"backend"}},
                              "10.0.0.10"};
const Destination kBackendSecondIp = {kBackend.workload, "10.0.0.11"};
const Destination kBackendV6 = {kBackend.workload, "fd00::10"};

// ---- policies (namespace "shop" unless named otherwise) ----

const IstioObject kAllowFrontend = AuthorizationPolicy("shop", "allow-frontend", R"({
  "action": "ALLOW",
  "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/frontend"]}}]}]})");
const IstioObject kAllowFrontendV1beta1 = AuthorizationPolicy("shop", "allow-frontend", R"({
  "action": "ALLOW",
  "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/frontend"]}}]}]})",
                                                              "v1beta1");
const IstioObject kAllowShopPrefix = AuthorizationPolicy("shop", "allow-shop-prefix", R"({
  "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/*"]}}]}]})");
const IstioObject kAllowFrontendSuffix = AuthorizationPolicy("shop", "allow-frontend-suffix", R"({
  "rules": [{"from": [{"source": {"principals": ["*/sa/frontend"]}}]}]})");
const IstioObject kAllowAnyPrincipal = AuthorizationPolicy("shop", "allow-any", R"({
  "rules": [{"from": [{"source": {"principals": ["*"]}}]}]})");
const IstioObject kAllowNotGateway = AuthorizationPolicy("shop", "allow-not-gateway", R"({
  "rules": [{"from": [{"source": {"notPrincipals": ["cluster.local/ns/web/sa/gateway"]}}]}]})");
const IstioObject kRequireMtls = AuthorizationPolicy("shop", "require-mtls", R"({
  "action": "DENY",
  "rules": [{"from": [{"source": {"notPrincipals": ["*"]}}]}]})");
const IstioObject kAllowWebNamespace = AuthorizationPolicy("shop", "allow-web", R"({
  "rules": [{"from": [{"source": {"namespaces": ["web"]}}]}]})");
const IstioObject kAllowWPrefixNamespace = AuthorizationPolicy("shop", "allow-w-namespaces", R"({
  "rules": [{"from": [{"source": {"namespaces": ["w*"]}}]}]})");
const IstioObject kSameNamespaceOnly = AuthorizationPolicy("shop", "same-namespace-only", R"({
  "action": "DENY",
  "rules": [{"from": [{"source": {"notNamespaces": ["shop"]}}]}]})");
const IstioObject kAllowFrontendSubnet = AuthorizationPolicy("shop", "allow-subnet", R"({
  "rules": [{"from": [{"source": {"ipBlocks": ["10.0.1.0/24"]}}]}]})");
const IstioObject kAllowSubnetWithHostBits = AuthorizationPolicy("shop", "allow-subnet", R"({
  "rules": [{"from": [{"source": {"ipBlocks": ["10.0.1.77/24"]}}]}]})");
const IstioObject kAllowGatewayIp = AuthorizationPolicy("shop", "allow-gateway-ip", R"({
  "rules": [{"from": [{"source": {"ipBlocks": ["10.0.2.7"]}}]}]})");
const IstioObject kAllowV6Subnet = AuthorizationPolicy("shop", "allow-v6", R"({
  "rules": [{"from": [{"source": {"ipBlocks": ["fd00:1::/64"]}}]}]})");
const IstioObject kInternalOnly = AuthorizationPolicy("shop", "internal-only", R"({
  "action": "DENY",
  "rules": [{"from": [{"source": {"notIpBlocks": ["10.0.0.0/16"]}}]}]})");
const IstioObject kAllowPort8080 = AuthorizationPolicy("shop", "allow-8080", R"({
  "rules": [{"to": [{"operation": {"ports": ["8080"]}}]}]})");
const IstioObject kOnly8080 = AuthorizationPolicy("shop", "only-8080", R"({
  "action": "DENY",
  "rules": [{"to": [{"operation": {"notPorts": ["8080"]}}]}]})");
const IstioObject kAllowPorts80And8080 = AuthorizationPolicy("shop", "allow-web-ports", R"({
  "rules": [{"to": [{"operation": {"ports": ["80", "8080"]}}]}]})");
const IstioObject kAllowFrontendOn8080 = AuthorizationPolicy("shop", "frontend-8080", R"({
  "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/frontend"]}}],
             "to": [{"operation": {"ports": ["8080"]}}]}]})");
const IstioObject kAllowFrontendOrWeb = AuthorizationPolicy("shop", "frontend-or-web", R"({
  "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/frontend"]}},
                      {"source": {"namespaces": ["web"]}}]}]})");
// Within one source, every field must hold.
const IstioObject kAllowWebFromItsSubnet = AuthorizationPolicy("shop", "web-from-subnet", R"({
  "rules": [{"from": [{"source": {"namespaces": ["web"], "ipBlocks": ["10.0.2.0/24"]}}]}]})");
const IstioObject kAllowTwoRules = AuthorizationPolicy("shop", "two-rules", R"({
  "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/frontend"]}}]},
            {"to": [{"operation": {"ports": ["9090"]}}]}]})");
const IstioObject kAllowWhenSourceIp = AuthorizationPolicy("shop", "when-source-ip", R"({
  "rules": [{"when": [{"key": "source.ip", "values": ["10.0.1.0/24"]}]}]})");
const IstioObject kAllowWhenNotWeb = AuthorizationPolicy("shop", "when-not-web", R"({
  "rules": [{"when": [{"key": "source.namespace", "notValues": ["web"]}]}]})");
const IstioObject kAllowWhenPrincipal = AuthorizationPolicy("shop", "when-principal", R"({
  "rules": [{"when": [{"key": "source.principal",
                       "values": ["cluster.local/ns/shop/sa/frontend"]}]}]})");
const IstioObject kAllowWhenPort = AuthorizationPolicy("shop", "when-port", R"({
  "rules": [{"when": [{"key": "destination.port", "values": ["8080"]}]}]})");
const IstioObject kDenyWhenDestinationIp = AuthorizationPolicy("shop", "deny-first-ip", R"({
  "action": "DENY",
  "rules": [{"when": [{"key": "destination.ip", "values": ["10.0.0.10"]}]}]})");
const IstioObject kDenyWhenNotPort = AuthorizationPolicy("shop", "deny-not-8080", R"({
  "action": "DENY",
  "rules": [{"when": [{"key": "destination.port", "notValues": ["8080"]}]}]})");
const IstioObject kAllowWhenBoth = AuthorizationPolicy("shop", "when-both", R"({
  "rules": [{"when": [{"key": "source.namespace", "values": ["shop"]},
                      {"key": "destination.port", "values": ["8080"]}]}]})");
const IstioObject kAllowAllThree = AuthorizationPolicy("shop", "from-to-when", R"({
  "rules": [{"from": [{"source": {"namespaces": ["shop"]}}],
             "to": [{"operation": {"ports": ["8080"]}}],
             "when": [{"key": "source.ip", "values": ["10.0.1.0/24"]}]}]})");

const IstioObject kMeshDenyGateway = AuthorizationPolicy("istio-system", "deny-gateway", R"({
  "action": "DENY",
  "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/web/sa/gateway"]}}]}]})");
const IstioObject kMeshAllowNothing = AuthorizationPolicy("istio-system", "allow-nothing", "{}");
const IstioObject kOtherNamespaceDenyAll = AuthorizationPolicy("web", "deny-all", R"({
  "action": "DENY", "rules": [{}]})");
const IstioObject kDenyAllToBackendPods = AuthorizationPolicy("shop", "deny-backend", R"({
  "action": "DENY", "selector": {"matchLabels": {"app": "backend"}}, "rules": [{}]})");
const IstioObject kDenyAllToFrontendPods = AuthorizationPolicy("shop", "deny-frontend", R"({
  "action": "DENY", "selector": {"matchLabels": {"app": "frontend"}}, "rules": [{}]})");
const IstioObject kDenyAllToBackendV2 = AuthorizationPolicy("shop", "deny-backend-v2", R"({
  "action": "DENY", "selector": {"matchLabels": {"app": "backend", "version": "v2"}},
  "rules": [{}]})");
const IstioObject kMeshDenyGatewayToBackends = AuthorizationPolicy("istio-system", "backends", R"({
  "action": "DENY", "selector": {"matchLabels": {"app": "backend"}},
  "rules": [{"from": [{"source": {"namespaces": ["web"]}}]}]})");
const IstioObject kServiceDenyGateway = AuthorizationPolicy("shop", "svc-deny-gateway", R"({
  "action": "DENY",
  "targetRefs": [{"group": "", "kind": "Service", "name": "backend"}],
  "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/web/sa/gateway"]}}]}]})");
const IstioObject kOtherServiceDenyAll = AuthorizationPolicy("shop", "payments-deny-all", R"({
  "action": "DENY",
  "targetRefs": [{"group": "", "kind": "Service", "name": "payments"}],
  "rules": [{}]})");
const IstioObject kGatewayAllowFrontend = AuthorizationPolicy("shop", "gateway-only", R"({
  "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "backend"}],
  "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/frontend"]}}]}]})");

const IstioObject kDenyGateway = AuthorizationPolicy("shop", "deny-gateway", R"({
  "action": "DENY",
  "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/web/sa/gateway"]}}]}]})");
const IstioObject kAllowNothing = AuthorizationPolicy("shop", "allow-nothing", R"({
  "action": "ALLOW"})");
const IstioObject kEmptySpec = AuthorizationPolicy("shop", "empty", "{}");
const IstioObject kAllowAll = AuthorizationPolicy("shop", "allow-all", R"({"rules": [{}]})");
const IstioObject kDenyWithoutRules = AuthorizationPolicy("shop", "deny-nothing", R"({
  "action": "DENY"})");

const IstioObject kAllowGetFromFrontend = AuthorizationPolicy("shop", "get-only", R"({
  "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/frontend"]}}],
             "to": [{"operation": {"methods": ["GET"]}}]}]})");
const IstioObject kAllowL7BesideL4 = AuthorizationPolicy("shop", "mixed", R"({
  "rules": [{"to": [{"operation": {"paths": ["/public/*"]}}]},
            {"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/frontend"]}}]}]})");
const IstioObject kDenyAdminPath = AuthorizationPolicy("shop", "deny-admin", R"({
  "action": "DENY",
  "rules": [{"to": [{"operation": {"ports": ["8080"], "paths": ["/admin*"]}}]}]})");
const IstioObject kDenyGatewayBadHeader = AuthorizationPolicy("shop", "deny-gateway-header", R"({
  "action": "DENY",
  "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/web/sa/gateway"]}}],
             "when": [{"key": "request.headers[x-debug]", "values": ["1"]}]}]})");
const IstioObject kAllowRemoteIp = AuthorizationPolicy("shop", "allow-remote-ip", R"({
  "rules": [{"when": [{"key": "remote.ip", "values": ["10.0.1.0/24"]}]}]})");
const IstioObject kDenyJwtHolders = AuthorizationPolicy("shop", "deny-jwt", R"({
  "action": "DENY",
  "rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]})");
const IstioObject kAllowHost = AuthorizationPolicy("shop", "allow-host", R"({
  "rules": [{"to": [{"operation": {"hosts": ["backend.shop.svc.cluster.local"]}}]}]})");

const IstioObject kAuditEverything = AuthorizationPolicy("shop", "audit-all", R"({
  "action": "AUDIT", "rules": [{}]})");
const IstioObject kCustomExtAuthz = AuthorizationPolicy("shop", "ext-authz", R"({
  "action": "CUSTOM", "provider": {"name": "opa"},
  "rules": [{"to": [{"operation": {"ports": ["8080"]}}]}]})");
const IstioObject kSchemePrincipal = AuthorizationPolicy("shop", "scheme-principal", R"({
  "rules": [{"from": [{"source": {"principals": ["spiffe://cluster.local/ns/shop/sa/frontend"]}}]}]})");
const IstioObject kBadCidrDeny = AuthorizationPolicy("shop", "bad-cidr", R"({
  "action": "DENY",
  "rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/33"]}}]}]})");

const IstioObject kAllowFrontendServiceAccount =
    AuthorizationPolicy("shop", "allow-frontend-sa", R"({
  "rules": [{"from": [{"source": {"serviceAccounts": ["frontend"]}}]}]})");
const IstioObject kDenyAllButGatewaySa = AuthorizationPolicy("shop", "gateway-sa-only", R"({
  "action": "DENY",
  "rules": [{"from": [{"source": {"notServiceAccounts": ["web/gateway"]}}]}]})");

// ---- the table ----

constexpr mt_action ALLOWED = MT_ACTION_ALLOW;
constexpr mt_action DENIED = MT_ACTION_DENY;
const char kNoAllowMatched[] = MT_POLICY_RULE_NO_ALLOW_MATCH;
const char kDefault[] = MT_POLICY_RULE_DEFAULT;

struct Case {
  const char *name; /* what it checks */
  std::vector<IstioObject> policies;
  Peer peer;
  uint16_t port;
  mt_action want;
  const char *rule;
  const Destination *destination = &kBackend;
};

const Case kCases[] = {
    // No policy at all: everything is allowed.
    {"NoPolicyAllowsAuthenticatedPeer", {}, kFrontend, 8080, ALLOWED, kDefault},
    {"NoPolicyAllowsPlaintextPeer", {}, kPlaintext, 8080, ALLOWED, kDefault},

    // principals: exact, prefix, suffix, presence.
    {"PrincipalExactAllowsThatPeer",
     {kAllowFrontend},
     kFrontend,
     8080,
     ALLOWED,
     "shop/allow-frontend[0]"},
    {"PrincipalExactDeniesAnotherPeer", {kAllowFrontend}, kGateway, 8080, DENIED, kNoAllowMatched},
    {"PrincipalExactDeniesPlaintext", {kAllowFrontend}, kPlaintext, 8080, DENIED, kNoAllowMatched},
    {"PrincipalExactIncludesTheTrustDomain",
     {kAllowFrontend},
     kPartner,
     8080,
     DENIED,
     kNoAllowMatched},
    {"PrincipalPrefixMatchesBelowIt",
     {kAllowShopPrefix},
     kFrontend,
     8080,
     ALLOWED,
     "shop/allow-shop-prefix[0]"},
    {"PrincipalPrefixDeniesOutsideIt", {kAllowShopPrefix}, kGateway, 8080, DENIED, kNoAllowMatched},
    {"PrincipalSuffixMatchesAnyTrustDomain",
     {kAllowFrontendSuffix},
     kPartner,
     8080,
     ALLOWED,
     "shop/allow-frontend-suffix[0]"},
    {"PrincipalSuffixDeniesOtherAccount",
     {kAllowFrontendSuffix},
     kGateway,
     8080,
     DENIED,
     kNoAllowMatched},
    {"PrincipalStarAllowsAnyAuthenticatedPeer",
     {kAllowAnyPrincipal},
     kGateway,
     8080,
     ALLOWED,
     "shop/allow-any[0]"},
    {"PrincipalStarDeniesPlaintext",
     {kAllowAnyPrincipal},
     kPlaintext,
     8080,
     DENIED,
     kNoAllowMatched},

    // notPrincipals.
    {"NotPrincipalsAllowsOthers",
     {kAllowNotGateway},
     kFrontend,
     8080,
     ALLOWED,
     "shop/allow-not-gateway[0]"},
    {"NotPrincipalsDeniesTheListedPeer",
     {kAllowNotGateway},
     kGateway,
     8080,
     DENIED,
     kNoAllowMatched},
    {"NotPrincipalsMatchesPlaintext",
     {kAllowNotGateway},
     kPlaintext,
     8080,
     ALLOWED,
     "shop/allow-not-gateway[0]"},
    {"DenyNotPrincipalsStarDeniesPlaintext",
     {kRequireMtls},
     kPlaintext,
     8080,
     DENIED,
     "shop/require-mtls[0]"},
    {"DenyNotPrincipalsStarAllowsAuthenticated", {kRequireMtls}, kPartner, 8080, ALLOWED, kDefault},

    // namespaces / notNamespaces.
    {"NamespacesAllowsPeerOfThatNamespace",
     {kAllowWebNamespace},
     kGateway,
     8080,
     ALLOWED,
     "shop/allow-web[0]"},
    {"NamespacesDeniesPeerOfAnotherNamespace",
     {kAllowWebNamespace},
     kFrontend,
     8080,
     DENIED,
     kNoAllowMatched},
    {"NamespacesDeniesPlaintext", {kAllowWebNamespace}, kPlaintext, 8080, DENIED, kNoAllowMatched},
    {"NamespacesPrefixWildcard",
     {kAllowWPrefixNamespace},
     kGateway,
     8080,
     ALLOWED,
     "shop/allow-w-namespaces[0]"},
    {"DenyNotNamespacesDeniesForeignPeer",
     {kSameNamespaceOnly},
     kGateway,
     8080,
     DENIED,
     "shop/same-namespace-only[0]"},
    {"DenyNotNamespacesAllowsSameNamespace",
     {kSameNamespaceOnly},
     kFrontend,
     8080,
     ALLOWED,
     kDefault},
    {"DenyNotNamespacesDeniesPlaintext",
     {kSameNamespaceOnly},
     kPlaintext,
     8080,
     DENIED,
     "shop/same-namespace-only[0]"},

    // ipBlocks / notIpBlocks: the peer's address, v4 and v6.
    {"IpBlockCidrAllowsAddressInside",
     {kAllowFrontendSubnet},
     kFrontend,
     8080,
     ALLOWED,
     "shop/allow-subnet[0]"},
    {"IpBlockCidrDeniesAddressOutside",
     {kAllowFrontendSubnet},
     kGateway,
     8080,
     DENIED,
     kNoAllowMatched},
    {"IpBlockAppliesToPlaintextToo",
     {kAllowFrontendSubnet},
     kPlaintextInFrontendSubnet,
     8080,
     ALLOWED,
     "shop/allow-subnet[0]"},
    {"IpBlockHostBitsAreIgnored",
     {kAllowSubnetWithHostBits},
     kFrontend,
     8080,
     ALLOWED,
     "shop/allow-subnet[0]"},
    {"IpBlockSingleAddressMatchesIt",
     {kAllowGatewayIp},
     kGateway,
     8080,
     ALLOWED,
     "shop/allow-gateway-ip[0]"},
    {"IpBlockSingleAddressDeniesOthers",
     {kAllowGatewayIp},
     kFrontend,
     8080,
     DENIED,
     kNoAllowMatched},
    {"IpBlockV6CidrAllowsAddressInside",
     {kAllowV6Subnet},
     kFrontendV6,
     8080,
     ALLOWED,
     "shop/allow-v6[0]",
     &kBackendV6},
    {"IpBlockV6CidrDeniesAddressOutside",
     {kAllowV6Subnet},
     kGatewayV6,
     8080,
     DENIED,
     kNoAllowMatched,
     &kBackendV6},
    {"IpBlockV6CidrDeniesV4Peer", {kAllowV6Subnet}, kFrontend, 8080, DENIED, kNoAllowMatched},
    {"DenyNotIpBlocksDeniesOutsideAddress",
     {kInternalOnly},
     kFrontendOutsideCluster,
     8080,
     DENIED,
     "shop/internal-only[0]"},
    {"DenyNotIpBlocksAllowsInsideAddress", {kInternalOnly}, kFrontend, 8080, ALLOWED, kDefault},

    // ports / notPorts.
    {"PortsAllowsListedPort", {kAllowPort8080}, kGateway, 8080, ALLOWED, "shop/allow-8080[0]"},
    {"PortsDeniesOtherPort", {kAllowPort8080}, kGateway, 9090, DENIED, kNoAllowMatched},
    {"PortsAnyListedValue",
     {kAllowPorts80And8080},
     kGateway,
     80,
     ALLOWED,
     "shop/allow-web-ports[0]"},
    {"DenyNotPortsDeniesOtherPort", {kOnly8080}, kFrontend, 9090, DENIED, "shop/only-8080[0]"},
    {"DenyNotPortsAllowsListedPort", {kOnly8080}, kFrontend, 8080, ALLOWED, kDefault},

    // AND across from / to / when; OR within lists and across rules.
    {"FromAndToBothMatch",
     {kAllowFrontendOn8080},
     kFrontend,
     8080,
     ALLOWED,
     "shop/frontend-8080[0]"},
    {"FromMatchesButToDoesNot", {kAllowFrontendOn8080}, kFrontend, 9090, DENIED, kNoAllowMatched},
    {"ToMatchesButFromDoesNot", {kAllowFrontendOn8080}, kGateway, 8080, DENIED, kNoAllowMatched},
    {"FromToWhenAllMatch", {kAllowAllThree}, kFrontend, 8080, ALLOWED, "shop/from-to-when[0]"},
    {"FromToMatchWhenDoesNot", {kAllowAllThree}, kPartner, 8080, DENIED, kNoAllowMatched},
    {"FirstSourceOfTwoMatches",
     {kAllowFrontendOrWeb},
     kFrontend,
     8080,
     ALLOWED,
     "shop/frontend-or-web[0]"},
    {"SecondSourceOfTwoMatches",
     {kAllowFrontendOrWeb},
     kGateway,
     8080,
     ALLOWED,
     "shop/frontend-or-web[0]"},
    {"NeitherSourceMatches", {kAllowFrontendOrWeb}, kPartner, 8080, DENIED, kNoAllowMatched},
    {"FieldsOfOneSourceAllMatch",
     {kAllowWebFromItsSubnet},
     kGateway,
     8080,
     ALLOWED,
     "shop/web-from-subnet[0]"},
    {"OneFieldOfASourceFailsIt",
     {kAllowWebFromItsSubnet},
     kGatewayV6,
     8080,
     DENIED,
     kNoAllowMatched,
     &kBackendV6},
    {"SecondRuleOfAPolicyMatches", {kAllowTwoRules}, kGateway, 9090, ALLOWED, "shop/two-rules[1]"},

    // when: the L4 keys, values and notValues.
    {"WhenSourceIpMatches",
     {kAllowWhenSourceIp},
     kFrontend,
     8080,
     ALLOWED,
     "shop/when-source-ip[0]"},
    {"WhenSourceIpDoesNotMatch", {kAllowWhenSourceIp}, kGateway, 8080, DENIED, kNoAllowMatched},
    {"WhenSourceNamespaceNotValuesExcludes",
     {kAllowWhenNotWeb},
     kGateway,
     8080,
     DENIED,
     kNoAllowMatched},
    {"WhenSourceNamespaceNotValuesAdmitsOthers",
     {kAllowWhenNotWeb},
     kFrontend,
     8080,
     ALLOWED,
     "shop/when-not-web[0]"},
    {"WhenSourcePrincipalMatches",
     {kAllowWhenPrincipal},
     kFrontend,
     8080,
     ALLOWED,
     "shop/when-principal[0]"},
    {"WhenSourcePrincipalDeniesPlaintext",
     {kAllowWhenPrincipal},
     kPlaintext,
     8080,
     DENIED,
     kNoAllowMatched},
    {"WhenDestinationPortMatches", {kAllowWhenPort}, kGateway, 8080, ALLOWED, "shop/when-port[0]"},
    {"WhenDestinationPortDoesNotMatch", {kAllowWhenPort}, kGateway, 9090, DENIED, kNoAllowMatched},
    {"WhenDestinationPortNotValues",
     {kDenyWhenNotPort},
     kFrontend,
     9090,
     DENIED,
     "shop/deny-not-8080[0]"},
    {"WhenDestinationIpMatches",
     {kDenyWhenDestinationIp},
     kFrontend,
     8080,
     DENIED,
     "shop/deny-first-ip[0]"},
    {"WhenDestinationIpOtherAddress",
     {kDenyWhenDestinationIp},
     kFrontend,
     8080,
     ALLOWED,
     kDefault,
     &kBackendSecondIp},
    {"WhenConditionsAllMatch", {kAllowWhenBoth}, kFrontend, 8080, ALLOWED, "shop/when-both[0]"},
    {"WhenOneConditionFails", {kAllowWhenBoth}, kFrontend, 9090, DENIED, kNoAllowMatched},

    // Scope.
    {"RootNamespacePolicyAppliesMeshWide",
     {kMeshDenyGateway},
     kGateway,
     8080,
     DENIED,
     "istio-system/deny-gateway[0]"},
    {"RootNamespaceAllowNothingDeniesEverywhere",
     {kMeshAllowNothing},
     kFrontend,
     8080,
     DENIED,
     kNoAllowMatched},
    {"PolicyOfAnotherNamespaceDoesNotApply",
     {kOtherNamespaceDenyAll},
     kFrontend,
     8080,
     ALLOWED,
     kDefault},
    {"SelectorMatchingTheWorkloadApplies",
     {kDenyAllToBackendPods},
     kFrontend,
     8080,
     DENIED,
     "shop/deny-backend[0]"},
    {"SelectorOfOtherPodsDoesNotApply",
     {kDenyAllToFrontendPods},
     kFrontend,
     8080,
     ALLOWED,
     kDefault},
    {"SelectorNeedsEveryLabel", {kDenyAllToBackendV2}, kFrontend, 8080, ALLOWED, kDefault},
    {"RootNamespaceSelectorAppliesInEveryNamespace",
     {kMeshDenyGatewayToBackends},
     kGateway,
     8080,
     DENIED,
     "istio-system/backends[0]"},
    {"TargetRefToTheWorkloadsServiceApplies",
     {kServiceDenyGateway},
     kGateway,
     8080,
     DENIED,
     "shop/svc-deny-gateway[0]"},
    {"TargetRefToAnotherServiceDoesNotApply",
     {kOtherServiceDenyAll},
     kFrontend,
     8080,
     ALLOWED,
     kDefault},
    {"TargetRefToAGatewaySelectsNoWorkload",
     {kGatewayAllowFrontend},
     kGateway,
     8080,
     ALLOWED,
     kDefault},

    // DENY before ALLOW.
    {"DenyWinsOverAMatchingAllow",
     {kAllowAnyPrincipal, kDenyGateway},
     kGateway,
     8080,
     DENIED,
     "shop/deny-gateway[0]"},
    {"AllowDecidesWhenNoDenyMatches",
     {kAllowAnyPrincipal, kDenyGateway},
     kFrontend,
     8080,
     ALLOWED,
     "shop/allow-any[0]"},
    {"MeshDenyWinsOverNamespaceAllow",
     {kMeshDenyGateway, kAllowAll},
     kGateway,
     8080,
     DENIED,
     "istio-system/deny-gateway[0]"},
    {"AnyMatchingAllowPolicySuffices",
     {kAllowFrontend, kAllowWebNamespace},
     kGateway,
     8080,
     ALLOWED,
     "shop/allow-web[0]"},

    // Empty policies.
    {"AllowWithoutRulesDeniesAll", {kAllowNothing}, kFrontend, 8080, DENIED, kNoAllowMatched},
    {"EmptySpecDeniesAll", {kEmptySpec}, kFrontend, 8080, DENIED, kNoAllowMatched},
    {"EmptySpecDeniesPlaintext", {kEmptySpec}, kPlaintext, 8080, DENIED, kNoAllowMatched},
    {"EmptyRuleAllowsAll", {kAllowAll}, kGateway, 9090, ALLOWED, "shop/allow-all[0]"},
    {"EmptyRuleAllowsPlaintext", {kAllowAll}, kPlaintext, 8080, ALLOWED, "shop/allow-all[0]"},
    {"EmptyRuleAllowsBesideAllowNothing",
     {kAllowAll, kAllowNothing},
     kFrontend,
     8080,
     ALLOWED,
     "shop/allow-all[0]"},
    {"DenyWithoutRulesHasNoEffect", {kDenyWithoutRules}, kFrontend, 8080, ALLOWED, kDefault},

    // Fields that need HTTP, at L4 (as ztunnel).
    {"AllowWithMethodsNeverGrants",
     {kAllowGetFromFrontend},
     kFrontend,
     8080,
     DENIED,
     kNoAllowMatched},
    {"AllowWithHostsNeverGrants", {kAllowHost}, kFrontend, 8080, DENIED, kNoAllowMatched},
    {"AllowWithRemoteIpConditionNeverGrants",
     {kAllowRemoteIp},
     kFrontend,
     8080,
     DENIED,
     kNoAllowMatched},
    {"L4RuleBesideAnL7RuleStillGrants",
     {kAllowL7BesideL4},
     kFrontend,
     8080,
     ALLOWED,
     "shop/mixed[1]"},
    {"DenyWithPathsDeniesItsWholePort",
     {kDenyAdminPath},
     kFrontend,
     8080,
     DENIED,
     "shop/deny-admin[0]"},
    {"DenyWithPathsLeavesOtherPorts", {kDenyAdminPath}, kFrontend, 9090, ALLOWED, kDefault},
    {"DenyWithHeaderConditionDeniesItsL4Match",
     {kDenyGatewayBadHeader},
     kGateway,
     8080,
     DENIED,
     "shop/deny-gateway-header[0]"},
    {"DenyWithHeaderConditionSparesOthers",
     {kDenyGatewayBadHeader},
     kFrontend,
     8080,
     ALLOWED,
     kDefault},
    {"DenyWithRequestPrincipalsDeniesEveryone",
     {kDenyJwtHolders},
     kPlaintext,
     8080,
     DENIED,
     "shop/deny-jwt[0]"},

    // Actions mtlsd does not support, and refused objects.
    {"AuditHasNoEffect", {kAuditEverything}, kFrontend, 8080, ALLOWED, kDefault},
    {"AuditBesideAllowChangesNothing",
     {kAuditEverything, kAllowFrontend},
     kGateway,
     8080,
     DENIED,
     kNoAllowMatched},
    {"CustomFailsClosed", {kCustomExtAuthz}, kFrontend, 8080, DENIED, "shop/ext-authz"},
    {"CustomFailsClosedBeyondItsPorts",
     {kCustomExtAuthz},
     kFrontend,
     9090,
     DENIED,
     "shop/ext-authz"},
    {"PrincipalWithSchemeFailsClosed",
     {kSchemePrincipal},
     kFrontend,
     8080,
     DENIED,
     "shop/scheme-principal"},
    {"BadCidrFailsClosed", {kBadCidrDeny, kAllowAll}, kFrontend, 8080, DENIED, "shop/bad-cidr"},

    // v1beta1 is the same schema.
    {"V1beta1AllowsLikeV1",
     {kAllowFrontendV1beta1},
     kFrontend,
     8080,
     ALLOWED,
     "shop/allow-frontend[0]"},
    {"V1beta1DeniesLikeV1", {kAllowFrontendV1beta1}, kGateway, 8080, DENIED, kNoAllowMatched},

    // serviceAccounts / notServiceAccounts.
    {"ServiceAccountShortFormIsThePolicysNamespace",
     {kAllowFrontendServiceAccount},
     kFrontend,
     8080,
     ALLOWED,
     "shop/allow-frontend-sa[0]"},
    {"ServiceAccountMatchesAnyTrustDomain",
     {kAllowFrontendServiceAccount},
     kPartner,
     8080,
     ALLOWED,
     "shop/allow-frontend-sa[0]"},
    {"ServiceAccountDeniesOtherAccount",
     {kAllowFrontendServiceAccount},
     kGateway,
     8080,
     DENIED,
     kNoAllowMatched},
    {"NotServiceAccountsDeniesOthers",
     {kDenyAllButGatewaySa},
     kFrontend,
     8080,
     DENIED,
     "shop/gateway-sa-only[0]"},
    {"NotServiceAccountsSparesTheListed",
     {kDenyAllButGatewaySa},
     kGateway,
     8080,
     ALLOWED,
     kDefault},
};

// ---- running one case through mtls-ca's compiler and the agent ----

int ToSockaddr(const char *ip, uint16_t port, sockaddr_storage *out) {
  memset(out, 0, sizeof(*out));
  auto *v4 = reinterpret_cast<sockaddr_in *>(out);
  auto *v6 = reinterpret_cast<sockaddr_in6 *>(out);
  if (inet_pton(AF_INET, ip, &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    return 1;
  }
  if (inet_pton(AF_INET6, ip, &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    return 1;
  }
  return 0;
}

std::string RuleNames(const Mtlsd__Mesh__V1__Policy *p) {
  std::string names;
  for (size_t i = 0; i < p->n_rules; i++) {
    names += std::string(i ? ", " : "") + p->rules[i]->name;
  }
  return "[" + names + "]";
}

class IstioConformance : public ::testing::TestWithParam<Case> {};

TEST_P(IstioConformance, DecidesAsIstio) {
  const Case &c = GetParam();
  mt_istio_policies *policies = mt_istio_policies_new(nullptr);
  ASSERT_NE(policies, nullptr);
  for (const IstioObject &object : c.policies) {
    std::string err;
    // Refused objects are part of the table (they fail closed).
    ASSERT_NE(mt_test::ApplyObject(policies, object, MT_CLUSTER_UPSERT, &err), -1) << err;
  }
  WorkloadView workload(c.destination->workload);
  mt_istio_compiled *compiled = mt_istio_compile(policies, workload.get());
  ASSERT_NE(compiled, nullptr);
  const Mtlsd__Mesh__V1__Policy *message = mt_istio_compiled_policy(compiled);
  char err[256] = "";
  mt_policy *policy = mt_policy_from_proto(message, err, sizeof(err));
  EXPECT_NE(policy, nullptr) << "the agent refused the compiled policy: " << err;
  if (policy != nullptr) {
    sockaddr_storage peer, destination;
    ASSERT_TRUE(ToSockaddr(c.peer.ip, 40000, &peer));
    ASSERT_TRUE(ToSockaddr(c.destination->ip, c.port, &destination));
    mt_policy_request request = {c.peer.id, reinterpret_cast<const sockaddr *>(&peer),
                                 reinterpret_cast<const sockaddr *>(&destination), c.port};
    mt_decision d = mt_policy_evaluate(policy, &request);
    EXPECT_EQ(d.action, c.want) << "got " << mt_action_str(d.action) << " by " << d.rule << " ("
                                << d.reason << "); rules " << RuleNames(message);
    EXPECT_STREQ(d.rule, c.rule) << d.reason << "; rules " << RuleNames(message);
  }
  mt_policy_free(policy);
  mt_istio_compiled_free(compiled);
  mt_istio_policies_free(policies);
}

INSTANTIATE_TEST_SUITE_P(Table, IstioConformance, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case> &info) {
                           return std::string(info.param.name);
                         });

TEST(IstioConformanceTable, HasAtLeastSixtyCases) {
  EXPECT_GE(sizeof(kCases) / sizeof(kCases[0]), 60u);
}

}  // namespace
