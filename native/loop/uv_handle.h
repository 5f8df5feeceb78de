// libuv handles that close themselves, and the hold on the environment their
// close callbacks need.
//
// A handle's close callback is code in this library. When a worker ends with
// an agent open, Node unloads the library right after the worker's cleanup
// hooks, so a callback still queued on the worker's loop would run in
// unmapped code. EnvHold is an async cleanup hook that keeps the environment
// until every handle holding it has closed: each handle holds it by
// shared_ptr, and the last close callback releases it. JS thread only.
#pragma once

#include <node_api.h>
#include <uv.h>

#include <memory>
#include <utility>

namespace kvxfer::loop {

class EnvHold {
 public:
  // Called when the environment goes away while the owner is still attached;
  // the owner then closes its handles, which lets the environment go.
  using OnTeardown = void (*)(void* owner);

  // Null when the hook cannot be added.
  static std::shared_ptr<EnvHold> Create(napi_env env, OnTeardown on_teardown, void* owner) {
    std::shared_ptr<EnvHold> hold(new EnvHold(on_teardown, owner));
    if (napi_add_async_cleanup_hook(env, &EnvHold::OnCleanup, hold.get(), &hold->hook_) != napi_ok) {
      hold->hook_ = nullptr;
      return nullptr;
    }
    return hold;
  }

  ~EnvHold() {
    if (hook_ != nullptr) napi_remove_async_cleanup_hook(hook_);
  }

  EnvHold(const EnvHold&) = delete;
  EnvHold& operator=(const EnvHold&) = delete;

  // The owner is gone or has let go: a later teardown concerns only the
  // handles still closing.
  void Detach() { owner_ = nullptr; }

 private:
  EnvHold(OnTeardown on_teardown, void* owner) : on_teardown_(on_teardown), owner_(owner) {}

  static void OnCleanup(napi_async_cleanup_hook_handle, void* arg) {
    auto* self = static_cast<EnvHold*>(arg);
    if (self->owner_ != nullptr) self->on_teardown_(self->owner_);
  }

  napi_async_cleanup_hook_handle hook_ = nullptr;
  OnTeardown on_teardown_;
  void* owner_;
};

// Owns one libuv handle of type T (uv_async_t, uv_prepare_t, ...). Close(),
// or the destructor, starts uv_close; the memory is freed, and the hold on the
// environment released, in the close callback, once libuv is done with it.
// A closing handle's callbacks never run again.
template <typename T>
class LoopHandle {
 public:
  LoopHandle() = default;
  ~LoopHandle() { Close(); }
  LoopHandle(const LoopHandle&) = delete;
  LoopHandle& operator=(const LoopHandle&) = delete;

  // `init(handle)` is the libuv initialiser (uv_async_init and the like,
  // bound to a loop and a callback); false when it fails, and then nothing
  // is open. Callbacks find `user` with User(handle).
  template <typename Init>
  bool Open(std::shared_ptr<EnvHold> hold, void* user, Init&& init) {
    Close();
    auto* block = new Block{T{}, std::move(hold), user};
    if (init(&block->handle) != 0) {
      delete block;
      return false;
    }
    block->handle.data = block;
    block_ = block;
    return true;
  }

  void Close() {
    if (block_ == nullptr) return;
    uv_close(reinterpret_cast<uv_handle_t*>(&block_->handle),
             [](uv_handle_t* handle) { delete static_cast<Block*>(handle->data); });
    block_ = nullptr;
  }

  bool is_open() const { return block_ != nullptr; }
  T* get() const { return block_ == nullptr ? nullptr : &block_->handle; }

  // Whether the handle keeps the loop alive.
  void SetRef(bool ref) {
    if (block_ == nullptr) return;
    auto* handle = reinterpret_cast<uv_handle_t*>(&block_->handle);
    if (ref) {
      uv_ref(handle);
    } else {
      uv_unref(handle);
    }
  }

  template <typename U>
  static U* User(T* handle) {
    return static_cast<U*>(static_cast<Block*>(handle->data)->user);
  }

 private:
  struct Block {
    T handle;
    std::shared_ptr<EnvHold> hold;
    void* user;
  };
  Block* block_ = nullptr;
};

}  // namespace kvxfer::loop
