// Where the API server is and who we are to it: kubeconfig files (yaml-cpp) and the in-cluster
// service-account setup. A ClusterConfig is plain data; TokenSource reads a token file again
// whenever the file changes, so a rotated projected token is used without a restart.
// TLS is always verified against the cluster CA: `insecure-skip-tls-verify` is refused.
//
// Thread safety: the Load* functions are pure (they read files); TokenSource is thread-safe.
#pragma once

#include <mutex>
#include <string>
#include <sys/types.h>

#include "protocol/status.h"

namespace kvcache::kube {

struct ClusterConfig {
  std::string server;              // "https://10.96.0.1:443" (no trailing slash)
  std::string ca_pem;              // PEM bundle the server certificate must chain to
  std::string ca_origin;           // where ca_pem came from, for error messages
  std::string tls_server_name;     // override for the certificate's name check ("" = host)
  std::string client_cert_pem;     // client certificate authentication (both or neither)
  std::string client_key_pem;
  std::string token;               // a static bearer token
  std::string token_file;          // a bearer token read from this file (wins over `token`)
  std::string default_namespace = "default";
};

// Reads a kubeconfig: the named context (current-context when empty), its cluster (server,
// certificate-authority[-data], tls-server-name) and user (client-certificate[-data],
// client-key[-data], token, tokenFile) and namespace. Relative file paths are relative to the
// kubeconfig's directory. Returns NotFound if the file or context is missing, InvalidArgument
// if it is malformed, FailedPrecondition for an https server without a CA (we never skip TLS
// verification) or for auth plugins (exec/auth-provider) this client does not run.
StatusOr<ClusterConfig> LoadKubeConfig(const std::string& path, const std::string& context = "");

struct InClusterPaths {
  // Empty: from the KUBERNETES_SERVICE_HOST / KUBERNETES_SERVICE_PORT environment.
  std::string host;
  std::string port;
  std::string dir = "/var/run/secrets/kubernetes.io/serviceaccount";  // token, ca.crt, namespace
};
// The pod's own identity. Returns FailedPrecondition when not in a cluster (no env / no token).
StatusOr<ClusterConfig> LoadInClusterConfig(const InClusterPaths& paths = {});

// What a kubectl-like binary does: `kubeconfig_flag` if given, else $KUBECONFIG (first entry),
// else in-cluster, else ~/.kube/config.
StatusOr<ClusterConfig> LoadDefaultConfig(const std::string& kubeconfig_flag = "");

// The bearer token for the next request: the file's content (trimmed) re-read whenever the
// file's inode, size or mtime changed since the last read, else the static token.
class TokenSource {
 public:
  TokenSource(std::string token, std::string token_file);
  // Returns NotFound when the file is missing or empty and no token was read before; once a
  // token was read, the last good one is kept while the file is missing or empty (a rotation
  // caught mid-write).
  StatusOr<std::string> Token();

 private:
  std::mutex mu_;
  std::string static_token_;
  std::string file_;
  std::string cached_;
  ino_t inode_ = 0;
  off_t size_ = -1;
  int64_t mtime_ns_ = -1;
};

// Reads a whole file. NotFound / Unavailable on errors.
StatusOr<std::string> ReadWholeFile(const std::string& path);

}  // namespace kvcache::kube
