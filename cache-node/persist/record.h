// The on-disk format shared by log segments and snapshots (format version 1).
//
// A file starts with a 16-byte header: 8-byte magic ("KVCLOG\0\1" for a log segment,
// "KVCSNP\0\1" for a snapshot), u32 format version, u32 reserved. Then framed records:
//
//   u32 payload length | u32 masked CRC32C of the payload | payload
//   payload = u8 type | u64 sequence | i64 absolute expiry ms (0: none)
//             | u32 key length | u32 value length | u16 content-type length
//             | key | value | content type
//
// All integers little-endian. A snapshot ends with a kEnd record whose key is empty and whose
// value holds the u64 count of put records before it, so a truncated snapshot is detectable.
//
// Thread safety: pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "protocol/status.h"

namespace kvcache::node {

constexpr uint32_t kFormatVersion = 1;
constexpr size_t kFileHeaderSize = 16;
constexpr std::string_view kLogMagic{"KVCLOG\0\1", 8};
constexpr std::string_view kSnapshotMagic{"KVCSNP\0\1", 8};
// Records larger than this are treated as corruption (values are limited far below it).
constexpr uint32_t kMaxRecordPayload = 1u << 30;

enum class RecordType : uint8_t { kPut = 1, kDelete = 2, kFlush = 3, kEnd = 4 };

struct Record {
  RecordType type = RecordType::kPut;
  uint64_t seq = 0;
  int64_t expire_at_ms = 0;
  std::string_view key;
  std::string_view value;
  std::string_view content_type;
};

// CRC32C (Castagnoli), hardware-accelerated where the CPU has SSE4.2.
uint32_t Crc32c(std::string_view data);
// leveldb's masking, so a CRC stored inside checksummed data does not checksum to itself.
inline uint32_t MaskCrc(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

// Appends the framed record to `out`.
void EncodeRecord(const Record& record, std::string* out);
// Size EncodeRecord will append.
size_t EncodedSize(const Record& record);

std::string FileHeader(std::string_view magic);
// Checks magic and version. Returns FailedPrecondition for a newer format version (with a
// message saying so), InvalidArgument (corruption) for anything else that is wrong.
Status CheckFileHeader(std::string_view data, std::string_view magic);

// Reads records one by one from a file's bytes (header excluded by the caller's offset).
// The views in returned records point into `data`.
class RecordReader {
 public:
  RecordReader(std::string_view data, size_t offset) : data_(data), offset_(offset) {}
  // The next record; nullopt at a clean end of data. On a torn or corrupt record returns
  // nullopt and sets corrupt() with offset() at the bad record's start.
  std::optional<Record> Next();
  bool corrupt() const { return corrupt_; }
  // The data ended inside a record (a torn tail, or a chunk boundary when streaming), as
  // opposed to a record that is complete but wrong.
  bool incomplete() const { return incomplete_; }
  const std::string& error() const { return error_; }
  size_t offset() const { return offset_; }

 private:
  std::string_view data_;
  size_t offset_;
  bool corrupt_ = false;
  bool incomplete_ = false;
  std::string error_;
};

}  // namespace kvcache::node
