// Env: every file-system call persistence makes goes through this interface, so tests can
// inject ENOSPC, EIO, short writes and fsync failures (FaultInjectionEnv) without a real full
// disk. PosixEnv is the real one.
//
// Thread safety: Env methods may be called from any thread; a WritableFile is used by one
// thread at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/status.h"

namespace kvcache::node {

class WritableFile {
 public:
  virtual ~WritableFile() = default;
  // Appends all of `data` or returns the error (ResourceExhausted for ENOSPC, Unavailable for
  // EIO and others). After an error part of `data` may have been written: see Truncate().
  virtual Status Append(std::string_view data) = 0;
  // fdatasync.
  virtual Status Sync() = 0;
  // Cuts the file back to `size` bytes (undoing a partial append).
  virtual Status Truncate(uint64_t size) = 0;
  virtual Status Close() = 0;
};

class Env {
 public:
  virtual ~Env() = default;
  // Creates (or truncates) a file for writing.
  virtual StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path) = 0;
  // Returns NotFound if absent.
  virtual StatusOr<std::string> ReadFile(const std::string& path) = 0;
  // Up to `length` bytes from `offset`; fewer (or none) at the end of the file.
  virtual StatusOr<std::string> ReadFileRange(const std::string& path, uint64_t offset,
                                              size_t length) = 0;
  virtual Status RenameFile(const std::string& from, const std::string& to) = 0;
  virtual Status RemoveFile(const std::string& path) = 0;
  virtual Status TruncateFile(const std::string& path, uint64_t size) = 0;
  // Names (not paths) of the entries of a directory.
  virtual StatusOr<std::vector<std::string>> ListDir(const std::string& dir) = 0;
  virtual Status CreateDir(const std::string& dir) = 0;
  // fsync of the directory itself, so renames and creations in it are durable.
  virtual Status SyncDir(const std::string& dir) = 0;
  // fsync of an existing file (e.g. after TruncateFile).
  virtual Status SyncFile(const std::string& path) = 0;
  virtual bool FileExists(const std::string& path) = 0;

  static Env& Posix();
};

// Status for an errno from a file operation: ENOSPC/EDQUOT -> ResourceExhausted,
// ENOENT -> NotFound, everything else -> Unavailable.
Status ErrnoStatus(int err, std::string_view what, std::string_view path);

// Wraps another Env and fails chosen operations on demand, for tests.
class FaultInjectionEnv final : public Env {
 public:
  enum class Fault { kNone, kNoSpace, kIoError, kShortWriteThenNoSpace };

  explicit FaultInjectionEnv(Env& base) : base_(base) {}

  // Faults apply to every file opened through this Env, until changed.
  void SetWriteFault(Fault fault);
  void SetSyncFault(bool fail);

  StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path) override;
  StatusOr<std::string> ReadFile(const std::string& path) override { return base_.ReadFile(path); }
  StatusOr<std::string> ReadFileRange(const std::string& path, uint64_t offset,
                                      size_t length) override {
    return base_.ReadFileRange(path, offset, length);
  }
  Status RenameFile(const std::string& from, const std::string& to) override {
    return base_.RenameFile(from, to);
  }
  Status RemoveFile(const std::string& path) override { return base_.RemoveFile(path); }
  Status TruncateFile(const std::string& path, uint64_t size) override {
    return base_.TruncateFile(path, size);
  }
  StatusOr<std::vector<std::string>> ListDir(const std::string& dir) override {
    return base_.ListDir(dir);
  }
  Status CreateDir(const std::string& dir) override { return base_.CreateDir(dir); }
  Status SyncDir(const std::string& dir) override;
  Status SyncFile(const std::string& path) override { return base_.SyncFile(path); }
  bool FileExists(const std::string& path) override { return base_.FileExists(path); }

  Fault write_fault() const;
  bool sync_fault() const;

 private:
  Env& base_;
  mutable std::mutex mu_;
  Fault write_fault_ = Fault::kNone;
  bool sync_fault_ = false;
};

}  // namespace kvcache::node
