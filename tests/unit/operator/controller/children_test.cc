#include "controller/children.h"

#include <set>

#include <gtest/gtest.h>

namespace kvcache::op {
namespace {

KVCacheSpec Spec() {
  KVCacheSpec spec;
  spec.name = "demo";
  spec.ns = "prod";
  spec.uid = "uid-1";
  spec.shards = 3;
  spec.replicas_per_shard = 1;
  return spec;
}

std::vector<Json> AllChildren(const KVCacheSpec& spec) {
  return {DesiredTokenSecret(spec, "t"), DesiredConfigMap(spec), DesiredHeadlessService(spec),
          DesiredClientService(spec), DesiredStatefulSet(spec, 0, "h"),
          DesiredPodDisruptionBudget(spec, 0), DesiredIngress(spec), DesiredServiceMonitor(spec),
          DesiredPrometheusRule(spec)};
}

TEST(Children, EveryChildIsOwnedAndLabelled) {
  KVCacheSpec spec = Spec();
  for (const Json& child : AllChildren(spec)) {
    SCOPED_TRACE(child["kind"].get<std::string>());
    const Json& md = child["metadata"];
    EXPECT_EQ(md["namespace"], "prod");
    ASSERT_EQ(md["ownerReferences"].size(), 1u);
    EXPECT_EQ(md["ownerReferences"][0]["uid"], "uid-1");
    EXPECT_EQ(md["ownerReferences"][0]["kind"], "KVCache");
    EXPECT_EQ(md["ownerReferences"][0]["apiVersion"], "kvcache.io/v1alpha1");
    EXPECT_EQ(md["ownerReferences"][0]["controller"], true);
    EXPECT_EQ(md["labels"]["app.kubernetes.io/name"], "kvcache");
    EXPECT_EQ(md["labels"]["app.kubernetes.io/instance"], "demo");
    EXPECT_EQ(md["labels"]["app.kubernetes.io/managed-by"], "kvcache-operator");
    EXPECT_TRUE(md["labels"].contains("app.kubernetes.io/component"));
  }
}

TEST(Children, StatefulSetRunsTheNodeSafely) {
  KVCacheSpec spec = Spec();
  spec.storage.storage_class = "fast";
  Json sts = DesiredStatefulSet(spec, 2, "abc");
  EXPECT_EQ(sts["metadata"]["name"], "demo-2");
  const Json& s = sts["spec"];
  EXPECT_EQ(s["replicas"], 2);
  EXPECT_EQ(s["serviceName"], "demo-nodes");
  EXPECT_EQ(s["podManagementPolicy"], "Parallel");
  EXPECT_EQ(s["selector"]["matchLabels"]["kvcache.io/shard"], "2");
  EXPECT_TRUE(ContainsDesired(s["template"]["metadata"]["labels"], s["selector"]["matchLabels"]))
      << "the selector must match the pod template";
  EXPECT_EQ(s["template"]["metadata"]["annotations"]["kvcache.io/config-hash"], "abc");
  const Json& pod = s["template"]["spec"];
  EXPECT_EQ(pod["securityContext"]["runAsNonRoot"], true);
  EXPECT_EQ(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
  EXPECT_EQ(pod["automountServiceAccountToken"], false);
  const Json& c = pod["containers"][0];
  EXPECT_EQ(c["image"], "kvcache/kvcache-node:0.1.0");
  EXPECT_EQ(c["securityContext"]["allowPrivilegeEscalation"], false);
  EXPECT_EQ(c["securityContext"]["capabilities"]["drop"][0], "ALL");
  EXPECT_EQ(c["startupProbe"]["httpGet"]["path"], "/healthz");
  EXPECT_EQ(c["livenessProbe"]["httpGet"]["path"], "/healthz");
  EXPECT_EQ(c["readinessProbe"]["httpGet"]["path"], "/readyz");
  EXPECT_EQ(c["envFrom"][0]["configMapRef"]["name"], "demo-config");
  bool has_name = false, has_token = false;
  for (const Json& e : c["env"]) {
    if (e["name"] == "KVCACHE_NODE_NAME") {
      has_name = e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name";
    }
    if (e["name"] == "KVCACHE_CLUSTER_TOKEN_FILE") has_token = true;
  }
  EXPECT_TRUE(has_name);
  EXPECT_TRUE(has_token);
  const Json& vct = s["volumeClaimTemplates"][0];
  EXPECT_EQ(vct["metadata"]["name"], "data");
  EXPECT_EQ(vct["spec"]["resources"]["requests"]["storage"], "1Gi");
  EXPECT_EQ(vct["spec"]["storageClassName"], "fast");
  // Built-in scheduling: spread the shard's nodes across hosts and zones.
  EXPECT_TRUE(pod["affinity"]["podAntiAffinity"].contains(
      "preferredDuringSchedulingIgnoredDuringExecution"));
  EXPECT_EQ(pod["topologySpreadConstraints"][0]["topologyKey"], "topology.kubernetes.io/zone");
}

TEST(Children, AntiAffinityFollowsTheSpec) {
  struct Case {
    std::string mode;
    bool has_affinity;
    std::string key;
  };
  for (const Case& c : std::vector<Case>{
           {"Preferred", true, "preferredDuringSchedulingIgnoredDuringExecution"},
           {"Required", true, "requiredDuringSchedulingIgnoredDuringExecution"},
           {"None", false, ""}}) {
    KVCacheSpec spec = Spec();
    spec.pod.anti_affinity = c.mode;
    Json pod = DesiredStatefulSet(spec, 0, "h")["spec"]["template"]["spec"];
    EXPECT_EQ(pod.contains("affinity"), c.has_affinity) << c.mode;
    if (c.has_affinity) {
      EXPECT_TRUE(pod["affinity"]["podAntiAffinity"].contains(c.key)) << c.mode;
    }
  }
  KVCacheSpec custom = Spec();
  custom.pod.affinity = {{"nodeAffinity", Json::object()}};
  EXPECT_EQ(DesiredStatefulSet(custom, 0, "h")["spec"]["template"]["spec"]["affinity"],
            custom.pod.affinity);
}

TEST(Children, AuthAndTlsSecretsAreMounted) {
  KVCacheSpec spec = Spec();
  spec.auth.secret_name = "client-token";
  spec.tls_secret = "node-tls";
  Json pod = DesiredStatefulSet(spec, 0, "h")["spec"]["template"]["spec"];
  std::set<std::string> secrets;
  for (const Json& v : pod["volumes"]) {
    if (v.contains("secret")) secrets.insert(v["secret"]["secretName"].get<std::string>());
  }
  EXPECT_EQ(secrets, (std::set<std::string>{"demo-cluster-token", "client-token", "node-tls"}));
  bool auth_env = false;
  for (const Json& e : pod["containers"][0]["env"]) {
    auth_env = auth_env || (e["name"] == "KVCACHE_AUTH_TOKEN_FILE" &&
                            e["value"] == "/var/run/kvcache/auth/token");
  }
  EXPECT_TRUE(auth_env);
}

TEST(Children, ServicesSelectTheNodes) {
  KVCacheSpec spec = Spec();
  Json headless = DesiredHeadlessService(spec);
  EXPECT_EQ(headless["metadata"]["name"], "demo-nodes");
  EXPECT_EQ(headless["spec"]["clusterIP"], "None");
  EXPECT_EQ(headless["spec"]["publishNotReadyAddresses"], true);
  Json pod_labels = DesiredStatefulSet(spec, 1, "h")["spec"]["template"]["metadata"]["labels"];
  EXPECT_TRUE(ContainsDesired(pod_labels, headless["spec"]["selector"]));

  spec.service.type = "NodePort";
  spec.service.node_port = 30080;
  spec.service.port = 80;
  Json client = DesiredClientService(spec);
  EXPECT_EQ(client["metadata"]["name"], "demo");
  EXPECT_EQ(client["spec"]["type"], "NodePort");
  EXPECT_EQ(client["spec"]["ports"][0]["port"], 80);
  EXPECT_EQ(client["spec"]["ports"][0]["nodePort"], 30080);
  EXPECT_EQ(client["spec"]["ports"][0]["targetPort"], "http");
  EXPECT_TRUE(ContainsDesired(pod_labels, client["spec"]["selector"]));
}

TEST(Children, ConfigMapCarriesTheNodeSettingsAsEnv) {
  KVCacheSpec spec = Spec();
  spec.memory.limit = "1Gi";
  spec.memory.eviction = "lfu";
  spec.persistence.fsync = "always";
  spec.resharding.max_keys_per_second = 5000;
  Json data = DesiredConfigMap(spec)["data"];
  EXPECT_EQ(data["KVCACHE_MIGRATION_MAX_KEYS_PER_SECOND"], "5000");
  EXPECT_EQ(data["KVCACHE_MAX_MEMORY"], "1Gi");
  EXPECT_EQ(data["KVCACHE_EVICTION"], "lfu");
  EXPECT_EQ(data["KVCACHE_FSYNC"], "always");
  EXPECT_EQ(data["KVCACHE_SNAPSHOT_INTERVAL_SECONDS"], "300");
}

TEST(Children, ConfigHashChangesWithConfigOrSecrets) {
  KVCacheSpec spec = Spec();
  Json cm = DesiredConfigMap(spec);
  std::string base = ConfigHash(cm, {"token:1"});
  EXPECT_EQ(base, ConfigHash(cm, {"token:1"}));
  EXPECT_NE(base, ConfigHash(cm, {"token:2"}));
  spec.memory.eviction = "lfu";
  EXPECT_NE(base, ConfigHash(DesiredConfigMap(spec), {"token:1"}));
}

TEST(Children, PdbAndIngress) {
  KVCacheSpec spec = Spec();
  Json pdb = DesiredPodDisruptionBudget(spec, 1);
  EXPECT_EQ(pdb["metadata"]["name"], "demo-1");
  EXPECT_EQ(pdb["spec"]["maxUnavailable"], 1);
  EXPECT_EQ(pdb["spec"]["selector"]["matchLabels"]["kvcache.io/shard"], "1");
  spec.ingress.enabled = true;
  spec.ingress.host = "cache.example";
  spec.ingress.tls_secret = "cert";
  Json ing = DesiredIngress(spec);
  EXPECT_EQ(ing["spec"]["rules"][0]["host"], "cache.example");
  EXPECT_EQ(ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"], "demo");
  EXPECT_EQ(ing["spec"]["tls"][0]["secretName"], "cert");
}

TEST(ContainsDesired, IgnoresServerAddedFieldsOnly) {
  Json desired = {{"spec", {{"replicas", 2}, {"ports", {{{"port", 80}}}}}}};
  Json live = {{"spec", {{"replicas", 2}, {"ports", {{{"port", 80}, {"protocol", "TCP"}}}}}},
               {"status", {{"ready", 1}}}};
  EXPECT_TRUE(ContainsDesired(live, desired));
  live["spec"]["replicas"] = 3;
  EXPECT_FALSE(ContainsDesired(live, desired));
  live["spec"]["replicas"] = 2;
  live["spec"]["ports"].push_back({{"port", 81}});
  EXPECT_FALSE(ContainsDesired(live, desired)) << "an extra list element is a difference";
  EXPECT_TRUE(ContainsDesired(Json::object(), {{"annotations", Json::object()}}));
}

TEST(Token, IsRandomAndSurvivesBase64) {
  std::string a = GenerateToken(), b = GenerateToken();
  EXPECT_EQ(a.size(), 43u);
  EXPECT_NE(a, b);
  for (const std::string& s : {std::string(""), std::string("a"), std::string("ab"),
                               std::string("abc"), a}) {
    EXPECT_EQ(Base64Decode(Base64Encode(s)), s);
  }
  EXPECT_EQ(Base64Encode("hello"), "aGVsbG8=");
}

}  // namespace
}  // namespace kvcache::op
