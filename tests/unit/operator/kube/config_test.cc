#include "kube/config.h"

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

namespace kvcache::kube {
namespace {

namespace fs = std::filesystem;

class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/kube-config-test-XXXXXX";
    dir_ = mkdtemp(tmpl);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Write(const std::string& name, const std::string& text) {
    std::string path = dir_ + "/" + name;
    std::ofstream(path) << text;
    return path;
  }
  std::string dir_;
};

// "-----BEGIN CA-----\n" in base64.
constexpr char kCaB64[] = "LS0tLS1CRUdJTiBDQS0tLS0tCg==";

TEST_F(ConfigTest, KubeconfigWithEmbeddedData) {
  std::string path = Write("kubeconfig", std::string(R"(apiVersion: v1
kind: Config
current-context: admin
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:6443/
    certificate-authority-data: )") + kCaB64 + R"(
contexts:
- name: admin
  context: {cluster: local, user: admin, namespace: prod}
- name: other
  context: {cluster: local, user: tok}
users:
- name: admin
  user:
    client-certificate-data: )" + kCaB64 + R"(
    client-key-data: )" + kCaB64 + R"(
- name: tok
  user:
    token: abc
)");
  auto config = LoadKubeConfig(path);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->server, "https://127.0.0.1:6443");
  EXPECT_EQ(config->ca_pem, "-----BEGIN CA-----\n");
  EXPECT_EQ(config->client_cert_pem, "-----BEGIN CA-----\n");
  EXPECT_EQ(config->default_namespace, "prod");
  auto other = LoadKubeConfig(path, "other");
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(other->token, "abc");
  EXPECT_EQ(other->default_namespace, "default");
  EXPECT_EQ(LoadKubeConfig(path, "nope").status().code(), StatusCode::kNotFound);
}

TEST_F(ConfigTest, KubeconfigWithRelativeFilesAndTokenFile) {
  Write("ca.crt", "CA");
  Write("token", "t1\n");
  std::string path = Write("kubeconfig", R"(current-context: c
clusters: [{name: k, cluster: {server: "https://h:1", certificate-authority: ca.crt}}]
contexts: [{name: c, context: {cluster: k, user: u}}]
users: [{name: u, user: {tokenFile: token}}]
)");
  auto config = LoadKubeConfig(path);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->ca_pem, "CA");
  EXPECT_EQ(config->ca_origin, dir_ + "/ca.crt");
  EXPECT_EQ(config->token_file, dir_ + "/token");
}

TEST_F(ConfigTest, NeverSkipsTlsVerification) {
  std::string path = Write("kubeconfig", R"(current-context: c
clusters: [{name: k, cluster: {server: "https://h:1", insecure-skip-tls-verify: true}}]
contexts: [{name: c, context: {cluster: k, user: u}}]
users: [{name: u, user: {token: x}}]
)");
  EXPECT_EQ(LoadKubeConfig(path).status().code(), StatusCode::kFailedPrecondition);
  std::string bad = Write("bad", "clusters: [unclosed");
  EXPECT_EQ(LoadKubeConfig(bad).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(LoadKubeConfig(dir_ + "/missing").status().code(), StatusCode::kNotFound);
}

TEST_F(ConfigTest, InCluster) {
  Write("token", "sa-token");
  Write("ca.crt", "CA");
  Write("namespace", "kvcache-system\n");
  auto config = LoadInClusterConfig({.host = "10.96.0.1", .port = "443", .dir = dir_});
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->server, "https://10.96.0.1:443");
  EXPECT_EQ(config->ca_pem, "CA");
  EXPECT_EQ(config->token_file, dir_ + "/token");
  EXPECT_EQ(config->default_namespace, "kvcache-system");
  auto v6 = LoadInClusterConfig({.host = "fd00::1", .port = "443", .dir = dir_});
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(v6->server, "https://[fd00::1]:443");
  EXPECT_EQ(LoadInClusterConfig({.host = "h", .port = "1", .dir = dir_ + "/none"}).status().code(),
            StatusCode::kFailedPrecondition);
}

TEST_F(ConfigTest, TokenFileRotationIsPickedUp) {
  std::string path = Write("token", "first\n");
  TokenSource source("", path);
  EXPECT_EQ(*source.Token(), "first");
  // Rotation the way the kubelet does it: a new file renamed over the old one.
  Write("token.new", "second");
  fs::rename(dir_ + "/token.new", path);
  EXPECT_EQ(*source.Token(), "second");
  // Caught mid-write: the last good token stays.
  Write("token", "");
  EXPECT_EQ(*source.Token(), "second");
  TokenSource fixed("static", "");
  EXPECT_EQ(*fixed.Token(), "static");
  TokenSource missing("", dir_ + "/none");
  EXPECT_EQ(missing.Token().status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace kvcache::kube
