// WriteLog: where the store reports each mutation before applying it, so persistence (or a
// replication stream) sees them in the order they are applied. The store knows nothing else
// about files or fsync.
//
// Thread safety: called concurrently from writer threads; see each method for the lock held.
#pragma once

#include <cstdint>
#include <string_view>

#include "protocol/status.h"

namespace kvcache::node {

class WriteLog {
 public:
  virtual ~WriteLog() = default;
  // Called with the key's shard lock held, so per key the log order is the apply order.
  // Returns the mutation's sequence number; a non-OK status refuses the mutation and the store
  // changes nothing.
  virtual StatusOr<uint64_t> LogPut(std::string_view key, std::string_view value,
                                    std::string_view content_type, int64_t expire_at_ms) = 0;
  virtual StatusOr<uint64_t> LogDelete(std::string_view key) = 0;
  // Called with every shard lock held.
  virtual StatusOr<uint64_t> LogFlush() = 0;
};

}  // namespace kvcache::node
