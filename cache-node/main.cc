// kvcache-node: one cache node. Parses flags (each with a KVCACHE_* environment twin), builds
// the store and the HTTP server, and runs until SIGTERM or SIGINT.
//
// Start order: the HTTP server comes up first so /healthz answers during a long recovery (the
// data API and /readyz answer 503 until the data directory is loaded), then recovery, then
// readiness.
//
// Shutdown order (SIGTERM, e.g. from the kubelet):
//   1. readiness turns false, so load balancers stop sending new requests;
//   2. the HTTP server stops accepting and its workers finish the request in hand;
//   2b. a slot migration's streaming stops after its batch in hand (it resumes on restart);
//   3. persistence: optional final snapshot, then the log is written and fsynced;
//   4. background work (active expiry) stops; the process exits 0.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <charconv>
#include <chrono>
#include <ctime>
#include <limits>
#include <memory>
#include <optional>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>
#include <tuple>

#include <CLI/CLI.hpp>
#include <fmt/chrono.h>
#include <nlohmann/json.hpp>
#include <spdlog/formatter.h>
#include <spdlog/spdlog.h>

#include "cluster/cluster_view.h"
#include "cluster/forwarder.h"
#include "cluster/migration.h"
#include "cluster/replication.h"
#include "persist/env.h"
#include "persist/persistence.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/node_api.h"
#include "store/store.h"

namespace kvcache::node {
namespace {

constexpr char kVersion[] = "0.1.0";

struct Flags {
  std::string listen = "0.0.0.0:8080";
  std::string port_file;
  std::string data_dir = "./data";
  std::string max_memory = "0";
  std::string eviction = "lru";
  size_t max_key_bytes = 1024;
  size_t max_value_bytes = 1 << 20;
  std::string auth_token_file;
  int threads = 0;
  int header_timeout_seconds = 10;
  int body_timeout_seconds = 60;
  bool persist = true;
  std::string fsync = "everysec";
  int snapshot_interval_seconds = 300;
  std::string snapshot_log_bytes = "256Mi";
  std::string log_segment_bytes = "64Mi";
  bool snapshot_on_shutdown = false;
  std::string node_name;
  std::string topology_file;
  std::string cluster_token_file;
  int forward_timeout_ms = 5000;
  size_t migration_batch_keys = 1000;
  std::string migration_batch_bytes = "512Ki";
  uint64_t migration_max_keys_per_second = 0;
  std::string replication = "async";
  int min_acks = 1;
  int replication_timeout_ms = 2000;
  std::string replication_backlog_bytes = "64Mi";
  int primary_lease_ms = 0;
  std::string log_format = "text";
  std::string log_level = "info";
};

// Reads a whole small file (token, topology). nullopt if it cannot be read.
std::optional<std::string> ReadSmallFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return std::nullopt;
  return text;
}

// A token file's content without trailing whitespace; nullopt if unreadable or empty.
std::optional<std::string> ReadTokenFile(const std::string& path) {
  std::optional<std::string> text = ReadSmallFile(path);
  while (text && !text->empty() && std::isspace(static_cast<unsigned char>(text->back()))) {
    text->pop_back();
  }
  if (!text || text->empty()) return std::nullopt;
  return text;
}

// The topology last installed, kept in the data directory so a restarted node knows its
// cluster before the operator speaks to it again. Written to a temp file, fsynced, renamed.
constexpr char kSavedTopology[] = "topology.json";

Status SaveTopology(const std::string& dir, const protocol::Topology& topology) {
  Env& env = Env::Posix();
  const std::string path = dir + "/" + kSavedTopology;
  StatusOr<std::unique_ptr<WritableFile>> file = env.NewWritableFile(path + ".tmp");
  if (!file.ok()) return file.status();
  Status st = (*file)->Append(protocol::EncodeTopology(topology));
  if (st.ok()) st = (*file)->Sync();
  if (st.ok()) st = (*file)->Close();
  if (st.ok()) st = env.RenameFile(path + ".tmp", path);
  if (st.ok()) st = env.SyncDir(dir);
  return st;
}

std::string HostName() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "kvcache-node";
  return name;
}

// "1048576", "512Mi", "2G": bytes with an optional Kubernetes-style suffix. InvalidArgument for
// anything else, including a count that does not fit in 64 bits (with or without its suffix).
StatusOr<uint64_t> ParseBytes(std::string_view text) {
  size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  if (digits == 0) return InvalidArgumentError("not a byte count: \"" + std::string(text) + "\"");
  uint64_t value = 0;
  if (std::from_chars(text.data(), text.data() + digits, value).ec != std::errc()) {
    return InvalidArgumentError("byte count out of range: \"" + std::string(text) + "\"");
  }
  std::string_view suffix = text.substr(digits);
  static const std::pair<std::string_view, uint64_t> kSuffixes[] = {
      {"", 1},          {"k", 1000},       {"K", 1000},       {"M", 1000000},
      {"G", 1000000000}, {"Ki", 1ULL << 10}, {"Mi", 1ULL << 20}, {"Gi", 1ULL << 30},
      {"Ti", 1ULL << 40}};
  for (const auto& [name, multiplier] : kSuffixes) {
    if (suffix != name) continue;
    if (value > std::numeric_limits<uint64_t>::max() / multiplier) {
      return InvalidArgumentError("byte count out of range: \"" + std::string(text) + "\"");
    }
    return value * multiplier;
  }
  return InvalidArgumentError("unknown size suffix \"" + std::string(suffix) +
                              "\" (use K, M, G, Ki, Mi, Gi or Ti)");
}

// --log-format json: one JSON object per line, {"ts", "level", "msg"}, the message escaped by
// nlohmann (a pattern with "%v" pasted it raw: a quote or newline in a path or a peer's answer
// broke the line; bytes that are not UTF-8 become U+FFFD).
class JsonLineFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    const auto since_epoch = msg.time.time_since_epoch();
    const std::time_t seconds = std::chrono::duration_cast<std::chrono::seconds>(since_epoch).count();
    const auto micros =
        std::chrono::duration_cast<std::chrono::microseconds>(since_epoch).count() % 1000000;
    std::tm utc{};
    gmtime_r(&seconds, &utc);
    const std::string line =
        nlohmann::ordered_json{{"ts", fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:06d}Z", utc, micros)},
                       {"level", std::string(spdlog::level::to_string_view(msg.level).data(),
                                             spdlog::level::to_string_view(msg.level).size())},
                       {"msg", std::string(msg.payload.data(), msg.payload.size())}}
            .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    dest.append(line.data(), line.data() + line.size());
    dest.push_back('\n');
  }
  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonLineFormatter>();
  }
};

void ConfigureLogging(const Flags& flags) {
  if (flags.log_format == "json") {
    spdlog::set_formatter(std::make_unique<JsonLineFormatter>());
  } else {
    // klog's layout: Lmmdd hh:mm:ss.uuuuuu threadid] message
    spdlog::set_pattern("%L%m%d %H:%M:%S.%f %6t] %v");
  }
  spdlog::set_level(spdlog::level::from_str(flags.log_level));
}

// Runs the store's active expiry every 100 ms until stopped.
class ExpiryLoop {
 public:
  explicit ExpiryLoop(Store& store) : store_(store), thread_([this] { Run(); }) {}
  ~ExpiryLoop() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  void Run() {
    constexpr size_t kBudget = 2000;
    std::unique_lock lock(mu_);
    while (!stop_) {
      lock.unlock();
      // Keep going while there is a backlog, but let writers in between batches.
      while (store_.ExpireSome(kBudget) == kBudget) std::this_thread::yield();
      lock.lock();
      cv_.wait_for(lock, std::chrono::milliseconds(100), [this] { return stop_; });
    }
  }

  Store& store_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

int Run(int argc, char** argv) {
  Flags flags;
  CLI::App app{"kvcache-node: a cache node serving GET/PUT/DELETE /v1/{key} over HTTP.\n"
               "Every flag can also be set by the environment variable named after it."};
  app.set_version_flag("--version", kVersion);
  app.add_option("--listen", flags.listen, "Address to serve HTTP on (host:port; port 0 = any)")
      ->envname("KVCACHE_LISTEN")
      ->capture_default_str();
  app.add_option("--port-file", flags.port_file,
                 "Write the bound port to this file once serving (for scripts and tests)")
      ->envname("KVCACHE_PORT_FILE");
  app.add_option("--data-dir", flags.data_dir, "Directory for the node's data (created if absent)")
      ->envname("KVCACHE_DATA_DIR")
      ->capture_default_str();
  app.add_option("--max-memory", flags.max_memory,
                 "Memory limit for entries in bytes (suffixes K M G Ki Mi Gi); 0 = no limit")
      ->envname("KVCACHE_MAX_MEMORY")
      ->capture_default_str();
  app.add_option("--eviction", flags.eviction,
                 "At the memory limit: evict least recently used (lru), least frequently used "
                 "(lfu), or refuse writes with 507 (noeviction)")
      ->envname("KVCACHE_EVICTION")
      ->check(CLI::IsMember({"lru", "lfu", "noeviction"}))
      ->capture_default_str();
  app.add_option("--max-key-bytes", flags.max_key_bytes, "Longest key; longer gets 414")
      ->envname("KVCACHE_MAX_KEY_BYTES")
      ->check(CLI::Range(size_t{1}, size_t{65536}))
      ->capture_default_str();
  app.add_option("--max-value-bytes", flags.max_value_bytes, "Largest value; larger gets 413")
      ->envname("KVCACHE_MAX_VALUE_BYTES")
      ->check(CLI::Range(size_t{1}, size_t{512} << 20))
      ->capture_default_str();
  app.add_option("--auth-token-file", flags.auth_token_file,
                 "If set, /v1 and /flush require 'Authorization: Bearer <token in this file>'")
      ->envname("KVCACHE_AUTH_TOKEN_FILE");
  app.add_option("--threads", flags.threads, "HTTP worker threads; 0 = one per usable CPU")
      ->envname("KVCACHE_THREADS")
      ->check(CLI::Range(0, 256))
      ->capture_default_str();
  app.add_option("--header-timeout-seconds", flags.header_timeout_seconds,
                 "Close clients that have not sent their headers within this time (408)")
      ->envname("KVCACHE_HEADER_TIMEOUT_SECONDS")
      ->check(CLI::Range(1, 3600))
      ->capture_default_str();
  app.add_option("--body-timeout-seconds", flags.body_timeout_seconds,
                 "Close clients that have not sent their body within this time (408)")
      ->envname("KVCACHE_BODY_TIMEOUT_SECONDS")
      ->check(CLI::Range(1, 3600))
      ->capture_default_str();
  app.add_option("--persist", flags.persist,
                 "Keep the data in --data-dir across restarts (false: memory only)")
      ->envname("KVCACHE_PERSIST")
      ->capture_default_str();
  app.add_option("--fsync", flags.fsync,
                 "When the log reaches the disk: always (a write is answered once durable; "
                 "concurrent writes share an fdatasync), everysec, or no (the kernel decides)")
      ->envname("KVCACHE_FSYNC")
      ->check(CLI::IsMember({"always", "everysec", "no"}))
      ->capture_default_str();
  app.add_option("--snapshot-interval-seconds", flags.snapshot_interval_seconds,
                 "Take a snapshot this often")
      ->envname("KVCACHE_SNAPSHOT_INTERVAL_SECONDS")
      ->check(CLI::Range(1, 7 * 24 * 3600))
      ->capture_default_str();
  app.add_option("--snapshot-log-bytes", flags.snapshot_log_bytes,
                 "Also take a snapshot once the log has grown by this much (0: never)")
      ->envname("KVCACHE_SNAPSHOT_LOG_BYTES")
      ->capture_default_str();
  app.add_option("--log-segment-bytes", flags.log_segment_bytes,
                 "Start a new log segment file after this many bytes")
      ->envname("KVCACHE_LOG_SEGMENT_BYTES")
      ->capture_default_str();
  app.add_option("--snapshot-on-shutdown", flags.snapshot_on_shutdown,
                 "Write a snapshot on SIGTERM so the next start replays no log")
      ->envname("KVCACHE_SNAPSHOT_ON_SHUTDOWN")
      ->capture_default_str();
  app.add_option("--node-name", flags.node_name,
                 "This node's stable name in the cluster topology (default: the host name, "
                 "i.e. the pod name in Kubernetes)")
      ->envname("KVCACHE_NODE_NAME");
  app.add_option("--topology-file", flags.topology_file,
                 "Cluster topology JSON (see docs/cluster.md): serve the keys of this node's "
                 "slots, forward the others one hop to their owner")
      ->envname("KVCACHE_TOPOLOGY_FILE");
  app.add_option("--cluster-token-file", flags.cluster_token_file,
                 "Bearer token of the admin API (/internal/*, used by the operator); without it "
                 "the admin API is disabled")
      ->envname("KVCACHE_CLUSTER_TOKEN_FILE");
  app.add_option("--forward-timeout-ms", flags.forward_timeout_ms,
                 "Give up on an owner that has not answered a forwarded request (503)")
      ->envname("KVCACHE_FORWARD_TIMEOUT_MS")
      ->check(CLI::Range(10, 600000))
      ->capture_default_str();
  app.add_option("--migration-batch-keys", flags.migration_batch_keys,
                 "Slot migration (source): keys per import batch sent to the target")
      ->envname("KVCACHE_MIGRATION_BATCH_KEYS")
      ->check(CLI::Range(size_t{1}, size_t{100000}))
      ->capture_default_str();
  app.add_option("--migration-batch-bytes", flags.migration_batch_bytes,
                 "Slot migration (source): largest import batch in bytes (one key at least); "
                 "keep it below the target's request limit")
      ->envname("KVCACHE_MIGRATION_BATCH_BYTES")
      ->capture_default_str();
  app.add_option("--migration-max-keys-per-second", flags.migration_max_keys_per_second,
                 "Slot migration (source): at most this many keys per second, sent in batches "
                 "of a tenth of it at most (0: no limit)")
      ->envname("KVCACHE_MIGRATION_MAX_KEYS_PER_SECOND")
      ->capture_default_str();
  app.add_option("--replication", flags.replication,
                 "async: a write is answered once in the local log; sync: once --min-acks "
                 "replicas have applied it too (else 503 + Retry-After: not acknowledged)")
      ->envname("KVCACHE_REPLICATION")
      ->check(CLI::IsMember({"async", "sync"}))
      ->capture_default_str();
  app.add_option("--min-acks", flags.min_acks, "Replicas that must apply a write in sync mode")
      ->envname("KVCACHE_MIN_ACKS")
      ->check(CLI::Range(0, 16))
      ->capture_default_str();
  app.add_option("--replication-timeout-ms", flags.replication_timeout_ms,
                 "Sync mode: answer 503 when the replicas have not acknowledged a write in time")
      ->envname("KVCACHE_REPLICATION_TIMEOUT_MS")
      ->check(CLI::Range(10, 600000))
      ->capture_default_str();
  app.add_option("--replication-backlog-bytes", flags.replication_backlog_bytes,
                 "Recent writes a primary keeps for replicas that fall behind; a replica further "
                 "behind gets a full sync")
      ->envname("KVCACHE_REPLICATION_BACKLOG_BYTES")
      ->capture_default_str();
  app.add_option("--primary-lease-ms", flags.primary_lease_ms,
                 "If > 0, a primary with replicas refuses writes (503) unless a replica answered "
                 "within this time: bounds what a cut-off async primary acknowledges. 0 = off")
      ->envname("KVCACHE_PRIMARY_LEASE_MS")
      ->check(CLI::Range(0, 600000))
      ->capture_default_str();
  app.add_option("--log-format", flags.log_format, "text (klog-like) or json")
      ->envname("KVCACHE_LOG_FORMAT")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
  app.add_option("--log-level", flags.log_level, "debug, info, warn or error")
      ->envname("KVCACHE_LOG_LEVEL")
      ->check(CLI::IsMember({"debug", "info", "warn", "error"}))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  ConfigureLogging(flags);

  StatusOr<uint64_t> max_memory = ParseBytes(flags.max_memory);
  StatusOr<uint64_t> snapshot_log_bytes = ParseBytes(flags.snapshot_log_bytes);
  StatusOr<uint64_t> segment_bytes = ParseBytes(flags.log_segment_bytes);
  StatusOr<uint64_t> migration_batch_bytes = ParseBytes(flags.migration_batch_bytes);
  StatusOr<uint64_t> backlog_bytes = ParseBytes(flags.replication_backlog_bytes);
  for (auto [name, parsed] : {std::pair{"--max-memory", &max_memory},
                              std::pair{"--snapshot-log-bytes", &snapshot_log_bytes},
                              std::pair{"--log-segment-bytes", &segment_bytes},
                              std::pair{"--migration-batch-bytes", &migration_batch_bytes},
                              std::pair{"--replication-backlog-bytes", &backlog_bytes}}) {
    if (!parsed->ok()) {
      spdlog::error("Invalid {}: {}", name, parsed->status().message());
      return 2;
    }
  }
  std::optional<std::string> token, cluster_token;
  for (auto [flag, path, target] : {std::tuple{"--auth-token-file", &flags.auth_token_file, &token},
                                    std::tuple{"--cluster-token-file", &flags.cluster_token_file,
                                               &cluster_token}}) {
    if (path->empty()) continue;
    *target = ReadTokenFile(*path);
    if (!*target) {
      spdlog::error("Empty or unreadable {} path={}", flag, *path);
      return 2;
    }
  }
  if (flags.node_name.empty()) flags.node_name = HostName();
  // The cluster view always exists: with no topology every key is local; the operator may
  // install one later (PUT /internal/topology). A --topology-file and the topology saved in
  // the data directory are both read; the higher epoch wins.
  ClusterView cluster(flags.node_name);
  std::vector<std::pair<std::string, std::string>> topology_sources;
  if (!flags.topology_file.empty()) topology_sources.emplace_back(flags.topology_file, "file");
  const std::string saved_topology = flags.data_dir + "/" + kSavedTopology;
  if (std::filesystem::exists(saved_topology)) {
    topology_sources.emplace_back(saved_topology, "saved");
  }
  for (const auto& [path, kind] : topology_sources) {
    std::optional<std::string> text = ReadSmallFile(path);
    StatusOr<protocol::Topology> topology =
        text ? protocol::ParseTopology(*text) : StatusOr<protocol::Topology>(
                                                    UnavailableError("cannot read the file"));
    if (!topology.ok()) {
      spdlog::error("Invalid topology path={}: {}", path, topology.status().message());
      return 2;
    }
    if (Status st = cluster.Update(std::move(*topology));
        !st.ok() && st.code() != StatusCode::kFailedPrecondition) {
      spdlog::error("Invalid topology path={}: {}", path, st.message());
      return 2;
    }
  }
  if (const Routing* routing = cluster.current()) {
    if (routing->self_shard < 0) {
      spdlog::warn("Node name={} is not in the topology: it forwards every key", flags.node_name);
    }
    spdlog::info("Loaded topology cluster={} epoch={} shards={} node={} shard={} primary={}",
                 routing->topology.cluster, routing->topology.epoch,
                 routing->topology.shards.size(), flags.node_name,
                 routing->self_shard < 0 ? -1 : routing->topology.shards[routing->self_shard].id,
                 routing->self_primary);
  }
  Forwarder forwarder(std::chrono::milliseconds(flags.forward_timeout_ms));
  std::error_code ec;
  std::filesystem::create_directories(flags.data_dir, ec);
  if (ec) {
    spdlog::error("Cannot create --data-dir path={} error={}", flags.data_dir, ec.message());
    return 2;
  }

  // Block the stop signals in every thread started from here on; the main thread waits for
  // them with sigwait().
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  SystemClock clock;
  StoreOptions store_options;
  store_options.max_memory_bytes = *max_memory;
  store_options.eviction = *ParseEvictionPolicy(flags.eviction);
  Store store(store_options, clock);
  std::atomic<bool> ready{false};
  auto is_ready = [&ready] { return ready.load(); };
  std::unique_ptr<Persistence> persistence;
  if (flags.persist) {
    PersistenceOptions persist_options;
    persist_options.dir = flags.data_dir;
    persist_options.journal.fsync = *ParseFsyncMode(flags.fsync);
    persist_options.journal.segment_bytes = std::max<uint64_t>(*segment_bytes, 4096);
    persist_options.snapshot_interval = std::chrono::seconds(flags.snapshot_interval_seconds);
    persist_options.snapshot_log_bytes = *snapshot_log_bytes;
    persist_options.snapshot_on_shutdown = flags.snapshot_on_shutdown;
    persistence = std::make_unique<Persistence>(
        Env::Posix(), store, clock, persist_options,
        [](const std::string& line) { spdlog::info("{}", line); });
  }
  // Every write gets a replication offset (the journal's sequence when persisting); the role
  // (primary, replica) follows the topology and promotions. See cluster/replication.h.
  ReplicationLog replication_log(*backlog_bytes);
  ReplicationOptions replication_options;
  replication_options.mode = *ParseReplicationMode(flags.replication);
  replication_options.min_acks = flags.min_acks;
  replication_options.ack_timeout = std::chrono::milliseconds(flags.replication_timeout_ms);
  replication_options.request_timeout =
      std::chrono::milliseconds(std::max(flags.forward_timeout_ms, 1000));
  replication_options.lease = std::chrono::milliseconds(flags.primary_lease_ms);
  replication_options.cluster_token = cluster_token.value_or("");
  if (persistence) {
    replication_options.state_path = flags.data_dir + "/replication.json";
    Persistence* persist = persistence.get();
    replication_options.durable_offset = [persist] {
      return persist->Stats().journal.durable_seq;
    };
  }
  Replication replication(store, cluster, replication_log, replication_options,
                          [](const std::string& line) { spdlog::info("{}", line); });

  // kvcache_node_ready follows /readyz: a replica also waits to catch up.
  NodeMetrics metrics(
      store, [&ready, &replication] { return ready.load() && replication.CaughtUp(); },
      kVersion, persistence.get());
  MigrationOptions migration_options;
  if (flags.persist) migration_options.data_dir = flags.data_dir;
  migration_options.cluster_token = cluster_token;
  migration_options.batch_keys = flags.migration_batch_keys;
  migration_options.batch_bytes = std::max<uint64_t>(*migration_batch_bytes, 1);
  migration_options.max_keys_per_second = flags.migration_max_keys_per_second;
  // A move ends when a pass over this store finds none of its slots' keys, which proves they
  // are all at the target only once the data directory is recovered and the store is not part
  // of a full sync (cluster/migration.h, step 5).
  migration_options.store_complete = [&ready, &replication]() -> Status {
    if (!ready.load()) return UnavailableError("this node is still recovering its data directory");
    if (replication.HoldsPartialCopy()) {
      return UnavailableError(
          "this node holds only part of its shard (a full sync from its primary was cut off)");
    }
    return Status::Ok();
  };
  Migrations migrations(store, cluster, forwarder, Env::Posix(), migration_options,
                        [](const std::string& line) { spdlog::info("{}", line); });
  if (Status loaded = migrations.Load(); !loaded.ok()) {
    spdlog::error("Cannot read the migration state: {}", loaded.message());
    return 1;
  }
  metrics.AddSource([&migrations] {
    return std::vector<NodeMetrics::Sample>{
        {"kvcache_node_migration_keys_moved_total",
         "Keys this node moved to another shard in slot migrations (as the source).", true,
         static_cast<double>(migrations.keys_moved_total())},
        {"kvcache_node_migration_active",
         "1 while this node is a slot migration's source, streaming or waiting for the flip.",
         false, migrations.active() ? 1.0 : 0.0},
        {"kvcache_node_migration_keys_remaining",
         "Keys of the migrating slots still here (estimate, updated per batch).", false,
         static_cast<double>(migrations.keys_remaining())}};
  });

  ApiOptions api_options;
  api_options.max_key_bytes = flags.max_key_bytes;
  api_options.max_value_bytes = flags.max_value_bytes;
  api_options.auth_token = token;
  api_options.cluster_token = cluster_token;
  NodeApi api(store, clock, api_options, is_ready,
              [&metrics, &replication] { return metrics.Render() + replication.MetricsText(); });
  api.SetReplication(&replication);
  api.SetMigrations(&migrations);
  const std::string data_dir = flags.data_dir;
  api.SetCluster(&cluster, [data_dir](const protocol::Topology& topology) {
    spdlog::info("Installed topology cluster={} epoch={}", topology.cluster, topology.epoch);
    return SaveTopology(data_dir, topology);
  });

  ServerOptions server_options;
  server_options.listen = flags.listen;
  server_options.threads = flags.threads;
  // Room for the request line and headers on top of the largest value.
  server_options.max_request_bytes = flags.max_value_bytes + flags.max_key_bytes * 3 + 64 * 1024;
  server_options.header_timeout = std::chrono::seconds(flags.header_timeout_seconds);
  server_options.body_timeout = std::chrono::seconds(flags.body_timeout_seconds);
  HttpServer server(api, metrics, server_options, persistence.get(), &forwarder);
  if (replication_options.mode == ReplicationMode::kSync) {
    // In the local file first (durable under fsync=always), then acknowledged by the replicas:
    // a primary killed and restarted before any failover must still hold every write its
    // replicas acknowledged, or its new term's full sync would erase them everywhere.
    Persistence* persist = persistence.get();
    server.SetAckWaiter([persist, &replication](uint64_t seq,
                                                std::function<void(const Status&)> done) {
      auto replicate = [seq, &replication, done](const Status& durable) {
        if (!durable.ok()) {
          done(durable);
        } else {
          replication.WaitAcked(seq, done);
        }
      };
      if (persist != nullptr) {
        persist->OnWritten(seq, replicate);
      } else {
        replicate(Status::Ok());
      }
    });
  }
  ExpiryLoop expiry(store);

  if (Status started = server.Start(); !started.ok()) {
    spdlog::error("Failed to start HTTP server: {}", started.message());
    return 1;
  }
  spdlog::info("Serving address={} port={} threads={} max_memory={} eviction={} auth={} "
               "data_dir={} persist={} fsync={} version={}",
               flags.listen, server.port(), server.threads(), *max_memory, flags.eviction,
               token ? "bearer" : "none", flags.data_dir, flags.persist, flags.fsync, kVersion);
  if (!flags.port_file.empty()) {
    // Write then rename, so a reader never sees a partial number.
    std::string tmp = flags.port_file + ".tmp";
    std::ofstream(tmp) << server.port() << "\n";
    std::filesystem::rename(tmp, flags.port_file, ec);
    if (ec) spdlog::warn("Cannot write --port-file path={} error={}", flags.port_file, ec.message());
  }

  if (persistence) {
    spdlog::info("Recovering data_dir={}", flags.data_dir);
    if (Status recovered = persistence->Recover(); !recovered.ok()) {
      spdlog::error("Cannot recover data_dir={}: {}", flags.data_dir, recovered.message());
      server.Shutdown();
      return recovered.code() == StatusCode::kFailedPrecondition ? 3 : 1;
    }
    persistence->StartBackground();
  }
  replication_log.SetInner(store.write_log(),
                           persistence ? persistence->Stats().journal.last_seq : 0);
  store.SetWriteLog(&replication_log);
  replication.Start();
  migrations.Resume();
  ready = true;
  spdlog::info("Ready keys={}", store.Stats().keys);

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  spdlog::info("Received {}, shutting down", signal_number == SIGTERM ? "SIGTERM" : "SIGINT");
  ready = false;
  server.Shutdown();
  migrations.Stop();
  replication.Stop();
  int exit_code = 0;
  if (persistence) {
    if (Status closed = persistence->Shutdown(); !closed.ok()) {
      spdlog::error("Could not sync the log on shutdown: {}", closed.message());
      exit_code = 1;
    }
  }
  spdlog::info("Stopped keys={}", store.Stats().keys);
  return exit_code;
}

}  // namespace
}  // namespace kvcache::node

int main(int argc, char** argv) { return kvcache::node::Run(argc, argv); }
