// The pointer type the CUDA kernels read and write device memory through, under the
// CPU execution emulator (common/compile_target.h names it device_ptr<T>; for nvcc it
// is a plain T*). It behaves as a plain pointer, and while the emulator counts
// accesses (runtime.h, set_counting) every element it reaches through [] or * is
// reported to record_access with its address, size and call site. The runtime groups
// the reports of a warp's 32 lanes into warp-wide accesses, as the GPU issues them,
// and counts their 32-byte sectors (global memory) or wavefronts (shared memory).
//
// It converts from T* and nullptr but never back to T*: code that needs a raw pointer
// does not compile, instead of silently escaping the count. An element reached
// through [] and then read and written (a += b) counts once.
#pragma once

#include <atomic>
#include <cstddef>
#include <type_traits>

namespace gateshift::emulation {

// Whether accesses are being counted (set_counting in runtime.h).
extern std::atomic<bool> counting_accesses;

// Reports an access of `bytes` at `address` by the calling emulated thread. Never
// inlined: its return address, inside the kernel that inlined the pointer's
// operator, names the access's call site.
[[gnu::noinline]] void record_access(const void* address, std::size_t bytes);

template <typename T>
class CountedPointer {
 public:
  CountedPointer() = default;
  CountedPointer(T* pointer) : p_(pointer) {}  // NOLINT: implicit, as a T* argument converts
  CountedPointer(std::nullptr_t) {}            // NOLINT
  template <typename U, typename = std::enable_if_t<std::is_convertible_v<U*, T*>>>
  CountedPointer(const CountedPointer<U>& other) : p_(other.get()) {}  // NOLINT: T* to const T*

  [[gnu::always_inline]] T& operator[](std::ptrdiff_t i) const {
    note(p_ + i);
    return p_[i];
  }
  [[gnu::always_inline]] T& operator*() const {
    note(p_);
    return *p_;
  }

  CountedPointer operator+(std::ptrdiff_t i) const {
    return CountedPointer(p_ + i);
  }
  friend CountedPointer operator+(std::ptrdiff_t i, CountedPointer p) {
    return p + i;
  }
  CountedPointer operator-(std::ptrdiff_t i) const {
    return CountedPointer(p_ - i);
  }
  std::ptrdiff_t operator-(CountedPointer other) const {
    return p_ - other.p_;
  }
  CountedPointer& operator+=(std::ptrdiff_t i) {
    p_ += i;
    return *this;
  }
  CountedPointer& operator-=(std::ptrdiff_t i) {
    p_ -= i;
    return *this;
  }
  CountedPointer& operator++() {
    ++p_;
    return *this;
  }
  explicit operator bool() const {
    return p_ != nullptr;
  }
  friend bool operator==(CountedPointer a, CountedPointer b) {
    return a.p_ == b.p_;
  }
  friend bool operator!=(CountedPointer a, CountedPointer b) {
    return a.p_ != b.p_;
  }

  // The plain pointer, for host code (never counted).
  T* get() const {
    return p_;
  }

 private:
  [[gnu::always_inline]] static void note(const T* at) {
    if (counting_accesses.load(std::memory_order_relaxed)) [[unlikely]] {
      record_access(at, sizeof(T));
    }
  }

  T* p_ = nullptr;
};

}  // namespace gateshift::emulation
