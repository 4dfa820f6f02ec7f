#include "kube/config.h"

#include <cctype>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <sys/stat.h>

#include <openssl/evp.h>
#include <yaml-cpp/yaml.h>

namespace kvcache::kube {
namespace {

std::string Trim(std::string s) {
  size_t b = s.find_first_not_of(" \t\r\n");
  size_t e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

StatusOr<std::string> DecodeBase64(const std::string& text, const char* field) {
  std::string in;
  for (char c : text) {
    if (!std::isspace(static_cast<unsigned char>(c))) in.push_back(c);
  }
  if (in.size() % 4 != 0) return InvalidArgumentError(std::string(field) + ": bad base64");
  std::string out(in.size() / 4 * 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(in.data()),
                          static_cast<int>(in.size()));
  if (n < 0) return InvalidArgumentError(std::string(field) + ": bad base64");
  size_t pad = 0;
  if (!in.empty() && in.back() == '=') ++pad;
  if (in.size() > 1 && in[in.size() - 2] == '=') ++pad;
  out.resize(static_cast<size_t>(n) - pad);
  return out;
}

std::string Resolve(const std::string& base_dir, const std::string& path) {
  if (path.empty() || path.front() == '/') return path;
  return base_dir + "/" + path;
}

std::string Scalar(const YAML::Node& node, const char* key) {
  if (!node || !node.IsMap()) return "";
  YAML::Node v = node[key];
  return v && v.IsScalar() ? v.as<std::string>() : "";
}

YAML::Node FindNamed(const YAML::Node& list, const std::string& name, const char* inner) {
  if (!list || !list.IsSequence()) return YAML::Node(YAML::NodeType::Undefined);
  for (const YAML::Node& entry : list) {
    if (Scalar(entry, "name") == name) return entry[inner];
  }
  return YAML::Node(YAML::NodeType::Undefined);
}

// PEM from `<key>-data` (base64) or the file `<key>`.
StatusOr<std::string> PemFrom(const YAML::Node& node, const std::string& key,
                              const std::string& base_dir, std::string* origin) {
  std::string data = Scalar(node, (key + "-data").c_str());
  if (!data.empty()) {
    if (origin) *origin = key + "-data in the kubeconfig";
    return DecodeBase64(data, (key + "-data").c_str());
  }
  std::string file = Scalar(node, key.c_str());
  if (file.empty()) return std::string();
  if (origin) *origin = Resolve(base_dir, file);
  return ReadWholeFile(Resolve(base_dir, file));
}

}  // namespace

StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFoundError("cannot open " + path);
  std::ostringstream out;
  out << in.rdbuf();
  if (in.bad()) return UnavailableError("cannot read " + path);
  return out.str();
}

StatusOr<ClusterConfig> LoadKubeConfig(const std::string& path, const std::string& context_name) {
  auto text = ReadWholeFile(path);
  if (!text.ok()) return text.status();
  std::string base_dir = path.find('/') == std::string::npos
                             ? "."
                             : path.substr(0, path.find_last_of('/'));
  try {
    YAML::Node root = YAML::Load(*text);
    std::string ctx_name = context_name.empty() ? Scalar(root, "current-context") : context_name;
    if (ctx_name.empty()) return InvalidArgumentError(path + ": no current-context");
    YAML::Node ctx = FindNamed(root["contexts"], ctx_name, "context");
    if (!ctx) return NotFoundError(path + ": context \"" + ctx_name + "\" not found");
    std::string cluster_name = Scalar(ctx, "cluster");
    std::string user_name = Scalar(ctx, "user");
    YAML::Node cluster = FindNamed(root["clusters"], cluster_name, "cluster");
    if (!cluster) return NotFoundError(path + ": cluster \"" + cluster_name + "\" not found");
    YAML::Node user = FindNamed(root["users"], user_name, "user");

    ClusterConfig config;
    config.server = Scalar(cluster, "server");
    while (!config.server.empty() && config.server.back() == '/') config.server.pop_back();
    if (config.server.empty()) return InvalidArgumentError(path + ": cluster has no server");
    config.tls_server_name = Scalar(cluster, "tls-server-name");
    auto ca = PemFrom(cluster, "certificate-authority", base_dir, &config.ca_origin);
    if (!ca.ok()) return ca.status();
    config.ca_pem = *ca;
    if (config.server.rfind("https://", 0) == 0 && config.ca_pem.empty()) {
      return FailedPreconditionError(
          path + ": cluster \"" + cluster_name +
          "\" has no certificate-authority; TLS verification is never skipped");
    }
    std::string ns = Scalar(ctx, "namespace");
    if (!ns.empty()) config.default_namespace = ns;
    if (user) {
      if (user["exec"] || user["auth-provider"]) {
        return FailedPreconditionError(path + ": user \"" + user_name +
                                       "\" needs an exec/auth-provider plugin (unsupported)");
      }
      auto cert = PemFrom(user, "client-certificate", base_dir, nullptr);
      if (!cert.ok()) return cert.status();
      auto key = PemFrom(user, "client-key", base_dir, nullptr);
      if (!key.ok()) return key.status();
      if (cert->empty() != key->empty()) {
        return InvalidArgumentError(path + ": client certificate and key must come together");
      }
      config.client_cert_pem = *cert;
      config.client_key_pem = *key;
      config.token = Scalar(user, "token");
      std::string token_file = Scalar(user, "tokenFile");
      if (!token_file.empty()) config.token_file = Resolve(base_dir, token_file);
    }
    return config;
  } catch (const YAML::Exception& e) {
    return InvalidArgumentError(path + ": " + e.what());
  }
}

StatusOr<ClusterConfig> LoadInClusterConfig(const InClusterPaths& paths) {
  std::string host = paths.host;
  std::string port = paths.port;
  if (host.empty()) {
    const char* h = std::getenv("KUBERNETES_SERVICE_HOST");
    host = h != nullptr ? h : "";
  }
  if (port.empty()) {
    const char* p = std::getenv("KUBERNETES_SERVICE_PORT");
    port = p != nullptr ? p : "";
  }
  if (host.empty() || port.empty()) {
    return FailedPreconditionError(
        "not in a cluster: KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set");
  }
  ClusterConfig config;
  // An IPv6 address needs brackets in a URL.
  bool v6 = host.find(':') != std::string::npos && host.front() != '[';
  config.server = "https://" + (v6 ? "[" + host + "]" : host) + ":" + port;
  config.token_file = paths.dir + "/token";
  auto token = ReadWholeFile(config.token_file);
  if (!token.ok()) {
    return FailedPreconditionError("not in a cluster: " + token.status().message());
  }
  config.ca_origin = paths.dir + "/ca.crt";
  auto ca = ReadWholeFile(config.ca_origin);
  if (!ca.ok()) return FailedPreconditionError("in-cluster CA: " + ca.status().message());
  config.ca_pem = *ca;
  if (auto ns = ReadWholeFile(paths.dir + "/namespace"); ns.ok() && !Trim(*ns).empty()) {
    config.default_namespace = Trim(*ns);
  }
  return config;
}

StatusOr<ClusterConfig> LoadDefaultConfig(const std::string& kubeconfig_flag) {
  if (!kubeconfig_flag.empty()) return LoadKubeConfig(kubeconfig_flag);
  if (const char* env = std::getenv("KUBECONFIG"); env != nullptr && *env != '\0') {
    std::string first(env);
    first = first.substr(0, first.find(':'));
    return LoadKubeConfig(first);
  }
  auto in_cluster = LoadInClusterConfig();
  if (in_cluster.ok()) return in_cluster;
  if (const char* home = std::getenv("HOME"); home != nullptr) {
    std::string path = std::string(home) + "/.kube/config";
    struct stat st;
    if (::stat(path.c_str(), &st) == 0) return LoadKubeConfig(path);
  }
  return FailedPreconditionError(
      "no Kubernetes configuration: pass --kubeconfig, set KUBECONFIG, or run in a pod (" +
      in_cluster.status().message() + ")");
}

TokenSource::TokenSource(std::string token, std::string token_file)
    : static_token_(std::move(token)), file_(std::move(token_file)) {}

StatusOr<std::string> TokenSource::Token() {
  std::lock_guard lock(mu_);
  if (file_.empty()) return static_token_;
  struct stat st;
  if (::stat(file_.c_str(), &st) != 0) {
    if (!cached_.empty()) return cached_;
    return NotFoundError("token file " + file_ + " is missing");
  }
  int64_t mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
  if (st.st_ino == inode_ && st.st_size == size_ && mtime_ns == mtime_ns_ && !cached_.empty()) {
    return cached_;
  }
  auto text = ReadWholeFile(file_);
  if (!text.ok()) {
    if (!cached_.empty()) return cached_;
    return text.status();
  }
  std::string token = Trim(*text);
  if (token.empty()) {
    // Caught mid-rotation: keep the last good token and look again next time.
    if (!cached_.empty()) return cached_;
    return NotFoundError("token file " + file_ + " is empty");
  }
  cached_ = std::move(token);
  inode_ = st.st_ino;
  size_ = st.st_size;
  mtime_ns_ = mtime_ns;
  return cached_;
}

}  // namespace kvcache::kube
