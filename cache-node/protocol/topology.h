// Cluster topology: which shard owns which of the 16384 hash slots, and which members (by
// stable pod name) are each shard's primary and replicas. The same JSON document whether the
// operator pushes it (PUT /internal/topology) or a node reads it from --topology-file:
//
//   {"cluster": "demo", "epoch": 7,
//    "shards": [{"id": 0, "slots": [[0, 8191]],
//                "primary": {"name": "demo-0-0", "addr": "127.0.1.1:8080"},
//                "replicas": [{"name": "demo-0-1", "addr": "127.0.1.2:8080"}]}, ...]}
//
// Slots follow Redis Cluster: slot = CRC16-XMODEM(key) mod 16384, where a key containing
// "{...}" with at least one byte between the first '{' and the next '}' is hashed on that part
// only, so "{user1}.a" and "{user1}.b" live together.
//
// Thread safety: pure functions and values.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/status.h"

namespace kvcache::protocol {

constexpr int kSlotCount = 16384;

// CRC16-XMODEM (polynomial 0x1021, initial value 0), as Redis Cluster uses.
uint16_t Crc16(std::string_view data);
// The slot of a key, honouring {hash tags}.
uint16_t KeySlot(std::string_view key);

struct Member {
  std::string name;  // stable pod name: members are identified by it, never by address
  std::string addr;  // host:port (a stable DNS name in Kubernetes)
  bool operator==(const Member&) const = default;
};

struct SlotRange {
  int first = 0;  // inclusive
  int last = 0;   // inclusive
  bool operator==(const SlotRange&) const = default;
};

struct Shard {
  int id = 0;
  std::vector<SlotRange> slots;
  Member primary;
  std::vector<Member> replicas;
  bool operator==(const Shard&) const = default;
};

struct Topology {
  std::string cluster;
  uint64_t epoch = 0;
  std::vector<Shard> shards;
  bool operator==(const Topology&) const = default;

  // Index into `shards` of each slot's owner. REQUIRES: Validate() passed.
  std::vector<int> SlotOwners() const;
};

// Checks the invariants: a cluster name, epoch >= 1, unique shard ids and member names,
// ranges within [0, 16383] with first <= last, every slot owned by exactly one shard, a
// primary with name and address in every shard. Returns InvalidArgument naming the problem.
Status Validate(const Topology& topology);

// Parses and validates the JSON document. InvalidArgument on malformed JSON, unknown or
// missing fields of the wrong type, or a failed Validate().
StatusOr<Topology> ParseTopology(std::string_view json);
std::string EncodeTopology(const Topology& topology);

// Splits [0, 16383] into `shards` contiguous ranges of near-equal size (shard i gets the i-th),
// the layout a new cluster starts with.
std::vector<SlotRange> EvenSlotRanges(int shards, int index);

}  // namespace kvcache::protocol
