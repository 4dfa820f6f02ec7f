#include "persist/record.h"

#include <nmmintrin.h>

#include <array>
#include <cstring>

namespace kvcache::node {
namespace {

constexpr size_t kFrameHeader = 8;
constexpr size_t kPayloadFixed = 1 + 8 + 8 + 4 + 4 + 2;

std::array<uint32_t, 256> MakeTable() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t crc = i;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1)));
    table[i] = crc;
  }
  return table;
}

uint32_t Crc32cSoftware(std::string_view data) {
  static const std::array<uint32_t, 256> kTable = MakeTable();
  uint32_t crc = 0xffffffffu;
  for (unsigned char c : data) crc = kTable[(crc ^ c) & 0xff] ^ (crc >> 8);
  return ~crc;
}

__attribute__((target("sse4.2"))) uint32_t Crc32cHardware(std::string_view data) {
  uint64_t crc = 0xffffffffu;
  const char* p = data.data();
  size_t n = data.size();
  while (n >= 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);
    crc = _mm_crc32_u64(crc, word);
    p += 8;
    n -= 8;
  }
  uint32_t crc32 = static_cast<uint32_t>(crc);
  while (n-- > 0) crc32 = _mm_crc32_u8(crc32, static_cast<unsigned char>(*p++));
  return ~crc32;
}

template <typename T>
void Put(std::string* out, T value) {
  char buf[sizeof(T)];
  std::memcpy(buf, &value, sizeof(T));  // little-endian hosts only (x86-64, arm64)
  out->append(buf, sizeof(T));
}

template <typename T>
T Get(const char* p) {
  T value;
  std::memcpy(&value, p, sizeof(T));
  return value;
}

}  // namespace

uint32_t Crc32c(std::string_view data) {
  static const bool kHardware = __builtin_cpu_supports("sse4.2");
  return kHardware ? Crc32cHardware(data) : Crc32cSoftware(data);
}

size_t EncodedSize(const Record& r) {
  return kFrameHeader + kPayloadFixed + r.key.size() + r.value.size() + r.content_type.size();
}

void EncodeRecord(const Record& r, std::string* out) {
  const size_t start = out->size();
  const uint32_t payload = static_cast<uint32_t>(EncodedSize(r) - kFrameHeader);
  Put<uint32_t>(out, payload);
  Put<uint32_t>(out, 0);  // CRC, filled in below
  Put<uint8_t>(out, static_cast<uint8_t>(r.type));
  Put<uint64_t>(out, r.seq);
  Put<int64_t>(out, r.expire_at_ms);
  Put<uint32_t>(out, static_cast<uint32_t>(r.key.size()));
  Put<uint32_t>(out, static_cast<uint32_t>(r.value.size()));
  Put<uint16_t>(out, static_cast<uint16_t>(r.content_type.size()));
  out->append(r.key);
  out->append(r.value);
  out->append(r.content_type);
  uint32_t crc = MaskCrc(Crc32c(std::string_view(*out).substr(start + kFrameHeader)));
  std::memcpy(out->data() + start + 4, &crc, 4);
}

std::string FileHeader(std::string_view magic) {
  std::string out(magic);
  Put<uint32_t>(&out, kFormatVersion);
  Put<uint32_t>(&out, 0);
  return out;
}

Status CheckFileHeader(std::string_view data, std::string_view magic) {
  if (data.size() < kFileHeaderSize) return InvalidArgumentError("file shorter than its header");
  if (data.substr(0, magic.size()) != magic) return InvalidArgumentError("bad magic number");
  uint32_t version = Get<uint32_t>(data.data() + 8);
  if (version > kFormatVersion) {
    return FailedPreconditionError("written in data format version " + std::to_string(version) +
                                   " by a newer kvcache; this binary reads up to version " +
                                   std::to_string(kFormatVersion));
  }
  if (version == 0) return InvalidArgumentError("format version 0");
  return Status::Ok();
}

std::optional<Record> RecordReader::Next() {
  if (corrupt_ || offset_ >= data_.size()) return std::nullopt;
  auto fail = [this](std::string why) -> std::optional<Record> {
    corrupt_ = true;
    error_ = std::move(why) + " at offset " + std::to_string(offset_);
    return std::nullopt;
  };
  if (data_.size() - offset_ < kFrameHeader) {
    incomplete_ = true;
    return fail("torn record header");
  }
  const char* p = data_.data() + offset_;
  uint32_t length = Get<uint32_t>(p);
  uint32_t stored_crc = Get<uint32_t>(p + 4);
  if (length < kPayloadFixed || length > kMaxRecordPayload) return fail("bad record length");
  if (data_.size() - offset_ - kFrameHeader < length) {
    incomplete_ = true;
    return fail("torn record");
  }
  std::string_view payload = data_.substr(offset_ + kFrameHeader, length);
  if (MaskCrc(Crc32c(payload)) != stored_crc) return fail("checksum mismatch");
  const char* q = payload.data();
  Record r;
  uint8_t type = Get<uint8_t>(q);
  if (type < 1 || type > 4) return fail("unknown record type");
  r.type = static_cast<RecordType>(type);
  r.seq = Get<uint64_t>(q + 1);
  r.expire_at_ms = Get<int64_t>(q + 9);
  uint32_t key_len = Get<uint32_t>(q + 17);
  uint32_t value_len = Get<uint32_t>(q + 21);
  uint16_t ct_len = Get<uint16_t>(q + 25);
  if (uint64_t{key_len} + value_len + ct_len != length - kPayloadFixed) {
    return fail("field lengths disagree with record length");
  }
  r.key = payload.substr(kPayloadFixed, key_len);
  r.value = payload.substr(kPayloadFixed + key_len, value_len);
  r.content_type = payload.substr(kPayloadFixed + key_len + value_len, ct_len);
  offset_ += kFrameHeader + length;
  return r;
}

}  // namespace kvcache::node
