#include "persist/env.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace kvcache::node {

Status ErrnoStatus(int err, std::string_view what, std::string_view path) {
  std::string msg = std::string(what) + " " + std::string(path) + ": " + std::strerror(err);
  if (err == ENOSPC || err == EDQUOT) return ResourceExhaustedError(msg);
  if (err == ENOENT) return NotFoundError(msg);
  return UnavailableError(msg);
}

namespace {

class PosixWritableFile final : public WritableFile {
 public:
  PosixWritableFile(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  ~PosixWritableFile() override {
    if (fd_ >= 0) ::close(fd_);
  }
  Status Append(std::string_view data) override {
    while (!data.empty()) {
      ssize_t n = ::write(fd_, data.data(), data.size());
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoStatus(errno, "write", path_);
      }
      data.remove_prefix(static_cast<size_t>(n));
    }
    return Status::Ok();
  }
  Status Sync() override {
    if (::fdatasync(fd_) != 0) return ErrnoStatus(errno, "fdatasync", path_);
    return Status::Ok();
  }
  Status Truncate(uint64_t size) override {
    if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) {
      return ErrnoStatus(errno, "ftruncate", path_);
    }
    if (::lseek(fd_, static_cast<off_t>(size), SEEK_SET) < 0) {
      return ErrnoStatus(errno, "lseek", path_);
    }
    return Status::Ok();
  }
  Status Close() override {
    int fd = fd_;
    fd_ = -1;
    if (fd >= 0 && ::close(fd) != 0) return ErrnoStatus(errno, "close", path_);
    return Status::Ok();
  }

 private:
  int fd_;
  std::string path_;
};

class PosixEnv final : public Env {
 public:
  StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path) override {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return ErrnoStatus(errno, "open", path);
    return std::unique_ptr<WritableFile>(new PosixWritableFile(fd, path));
  }
  StatusOr<std::string> ReadFile(const std::string& path) override {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return ErrnoStatus(errno, "stat", path);
    return ReadFileRange(path, 0, static_cast<size_t>(st.st_size));
  }
  StatusOr<std::string> ReadFileRange(const std::string& path, uint64_t offset,
                                      size_t length) override {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ErrnoStatus(errno, "open", path);
    std::string out(length, '\0');
    size_t got = 0;
    while (got < length) {
      ssize_t n = ::pread(fd, out.data() + got, length - got, static_cast<off_t>(offset + got));
      if (n < 0) {
        if (errno == EINTR) continue;
        int err = errno;
        ::close(fd);
        return ErrnoStatus(err, "read", path);
      }
      if (n == 0) break;
      got += static_cast<size_t>(n);
    }
    ::close(fd);
    out.resize(got);
    return out;
  }
  Status RenameFile(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0) return ErrnoStatus(errno, "rename", from);
    return Status::Ok();
  }
  Status RemoveFile(const std::string& path) override {
    if (::unlink(path.c_str()) != 0) return ErrnoStatus(errno, "unlink", path);
    return Status::Ok();
  }
  Status TruncateFile(const std::string& path, uint64_t size) override {
    if (::truncate(path.c_str(), static_cast<off_t>(size)) != 0) {
      return ErrnoStatus(errno, "truncate", path);
    }
    return Status::Ok();
  }
  StatusOr<std::vector<std::string>> ListDir(const std::string& dir) override {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return ErrnoStatus(errno, "opendir", dir);
    std::vector<std::string> names;
    while (dirent* e = ::readdir(d)) {
      std::string name = e->d_name;
      if (name != "." && name != "..") names.push_back(std::move(name));
    }
    ::closedir(d);
    return names;
  }
  Status CreateDir(const std::string& dir) override {
    if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
      return ErrnoStatus(errno, "mkdir", dir);
    }
    return Status::Ok();
  }
  Status SyncFile(const std::string& path) override { return FsyncPath(path, O_RDONLY); }
  bool FileExists(const std::string& path) override {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0;
  }
  Status SyncDir(const std::string& dir) override {
    return FsyncPath(dir, O_RDONLY | O_DIRECTORY);
  }

 private:
  static Status FsyncPath(const std::string& path, int flags) {
    int fd = ::open(path.c_str(), flags | O_CLOEXEC);
    if (fd < 0) return ErrnoStatus(errno, "open", path);
    int rc = ::fsync(fd);
    int err = errno;
    ::close(fd);
    if (rc != 0) return ErrnoStatus(err, "fsync", path);
    return Status::Ok();
  }
};

// Wraps a real file; consults the Env's current faults on every call.
class FaultyWritableFile final : public WritableFile {
 public:
  FaultyWritableFile(std::unique_ptr<WritableFile> base, const FaultInjectionEnv& env)
      : base_(std::move(base)), env_(env) {}
  Status Append(std::string_view data) override {
    switch (env_.write_fault()) {
      case FaultInjectionEnv::Fault::kNone: return base_->Append(data);
      case FaultInjectionEnv::Fault::kNoSpace:
        return ResourceExhaustedError("write: No space left on device (injected)");
      case FaultInjectionEnv::Fault::kIoError:
        return UnavailableError("write: Input/output error (injected)");
      case FaultInjectionEnv::Fault::kShortWriteThenNoSpace: {
        // Half the bytes reach the file, then the disk is full: a torn record.
        Status st = base_->Append(data.substr(0, data.size() / 2));
        if (!st.ok()) return st;
        return ResourceExhaustedError("write: No space left on device (injected, short write)");
      }
    }
    return base_->Append(data);
  }
  Status Sync() override {
    if (env_.sync_fault()) return UnavailableError("fdatasync: Input/output error (injected)");
    return base_->Sync();
  }
  Status Truncate(uint64_t size) override { return base_->Truncate(size); }
  Status Close() override { return base_->Close(); }

 private:
  std::unique_ptr<WritableFile> base_;
  const FaultInjectionEnv& env_;
};

}  // namespace

Env& Env::Posix() {
  static PosixEnv env;
  return env;
}

void FaultInjectionEnv::SetWriteFault(Fault fault) {
  std::lock_guard lock(mu_);
  write_fault_ = fault;
}
void FaultInjectionEnv::SetSyncFault(bool fail) {
  std::lock_guard lock(mu_);
  sync_fault_ = fail;
}
FaultInjectionEnv::Fault FaultInjectionEnv::write_fault() const {
  std::lock_guard lock(mu_);
  return write_fault_;
}
bool FaultInjectionEnv::sync_fault() const {
  std::lock_guard lock(mu_);
  return sync_fault_;
}

StatusOr<std::unique_ptr<WritableFile>> FaultInjectionEnv::NewWritableFile(
    const std::string& path) {
  if (write_fault() == Fault::kNoSpace) {
    return ResourceExhaustedError("open " + path + ": No space left on device (injected)");
  }
  StatusOr<std::unique_ptr<WritableFile>> base = base_.NewWritableFile(path);
  if (!base.ok()) return base.status();
  return std::unique_ptr<WritableFile>(new FaultyWritableFile(std::move(*base), *this));
}

Status FaultInjectionEnv::SyncDir(const std::string& dir) {
  if (sync_fault()) return UnavailableError("fsync " + dir + ": Input/output error (injected)");
  return base_.SyncDir(dir);
}

}  // namespace kvcache::node
