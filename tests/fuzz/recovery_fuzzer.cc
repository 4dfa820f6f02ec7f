// Fuzzes everything that reads bytes from disk: record decoding, and recovery of a data
// directory whose log segment or snapshot holds the input. Recovery must never crash, hang or
// read out of bounds, whatever the bytes; it may only report corruption.
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "persist/env.h"
#include "persist/persistence.h"
#include "persist/record.h"

namespace {

using namespace kvcache::node;

std::string& BaseDir() {
  static std::string dir;
  return dir;
}

// One scratch directory per fuzzing process, removed when the fuzzer exits normally.
std::string TempDir() {
  static const bool made = [] {
    std::string pattern = (std::filesystem::temp_directory_path() / "kvc-fuzz-XXXXXX").string();
    BaseDir() = mkdtemp(pattern.data());
    std::atexit([] {
      std::error_code ignored;
      std::filesystem::remove_all(BaseDir(), ignored);
    });
    return true;
  }();
  (void)made;
  return BaseDir();
}

void Recover(const std::string& file_name, const std::string& bytes) {
  const std::string dir = TempDir() + "/data";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/" + file_name, std::ios::binary) << bytes;
  FakeClock clock;
  Store store({}, clock);
  PersistenceOptions options;
  options.dir = dir;
  options.journal.fsync = FsyncMode::kNo;
  Persistence persistence(Env::Posix(), store, clock, options, nullptr);
  (void)persistence.Recover();
  (void)persistence.Shutdown();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t mode = data[0] % 4;
  std::string bytes(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (mode) {
    case 0: {  // bare records
      RecordReader reader(bytes, 0);
      while (reader.Next()) {
      }
      break;
    }
    case 1:  // a log segment with a valid header
      Recover("log-00000000000000000001.seg", FileHeader(kLogMagic) + bytes);
      break;
    case 2:  // a snapshot with a valid header
      Recover("snapshot-00000000000000000005.snap", FileHeader(kSnapshotMagic) + bytes);
      break;
    case 3:  // any bytes as a segment (bad headers, other versions)
      Recover("log-00000000000000000001.seg", bytes);
      break;
  }
  return 0;
}
