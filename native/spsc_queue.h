// An unbounded single-producer single-consumer queue: a linked list of
// fixed-size chunks. Passing one item costs two uncontended atomic accesses
// and no system call, where a mutex shared by a thread that posts a million
// transfers a second and a thread that polls for them ends up in futex
// sleeps and wake-ups on almost every hand-off.
#pragma once

#include <atomic>
#include <cstddef>
#include <utility>

namespace kvxfer {

template <typename T, size_t kChunkItems = 256>
class SpscQueue {
 public:
  SpscQueue() : head_(new Chunk), tail_(head_) {}
  ~SpscQueue() {
    while (head_ != nullptr) {
      Chunk* next = head_->next.load(std::memory_order_relaxed);
      delete head_;
      head_ = next;
    }
    delete spare_.load(std::memory_order_relaxed);
  }
  SpscQueue(const SpscQueue&) = delete;
  SpscQueue& operator=(const SpscQueue&) = delete;

  // Producer thread only. Sequentially consistent, so that a consumer which
  // announces it is going to sleep and then finds the queue empty cannot
  // miss an item pushed by a producer that then finds it awake.
  void Push(T item) {
    Stage(std::move(item));
    Publish();
  }

  // Producer thread only: adds an item the consumer does not see until the
  // next Publish (or Push). A burst of items then costs one publishing store,
  // and the consumer's cache line moves once, not once per item.
  void Stage(T item) {
    if (tail_index_ == kChunkItems) {
      // The consumer leaves a chunk only once it has read all of it.
      tail_->written.store(kChunkItems, std::memory_order_seq_cst);
      Chunk* chunk = spare_.exchange(nullptr, std::memory_order_acquire);
      if (chunk == nullptr) chunk = new Chunk;
      chunk->written.store(0, std::memory_order_relaxed);
      chunk->next.store(nullptr, std::memory_order_relaxed);
      tail_->next.store(chunk, std::memory_order_seq_cst);
      tail_ = chunk;
      tail_index_ = 0;
    }
    tail_->items[tail_index_++] = std::move(item);
  }

  // Producer thread only: makes every staged item visible.
  void Publish() { tail_->written.store(tail_index_, std::memory_order_seq_cst); }

  // Consumer thread only.
  bool Pop(T* out) {
    if (head_index_ == kChunkItems) {
      Chunk* next = head_->next.load(std::memory_order_acquire);
      if (next == nullptr) return false;
      Recycle(head_);
      head_ = next;
      head_index_ = 0;
    }
    if (head_index_ >= head_->written.load(std::memory_order_acquire)) return false;
    *out = std::move(head_->items[head_index_]);
    head_->items[head_index_] = T();  // release what the item held now, not when the chunk is reused
    ++head_index_;
    return true;
  }

  // Consumer thread only: items waiting, counting a whole chunk for any
  // chunk after the current one (enough to tell a short queue from a long).
  // Sequentially consistent, the other half of Push's handshake.
  size_t Backlog() const {
    if (head_index_ == kChunkItems) {
      return head_->next.load(std::memory_order_seq_cst) == nullptr ? 0 : kChunkItems;
    }
    size_t waiting = head_->written.load(std::memory_order_seq_cst) - head_index_;
    if (head_->next.load(std::memory_order_seq_cst) != nullptr) waiting += kChunkItems;
    return waiting;
  }

  bool Empty() const { return Backlog() == 0; }

 private:
  struct Chunk {
    T items[kChunkItems];
    std::atomic<size_t> written{0};
    std::atomic<Chunk*> next{nullptr};
  };

  // One drained chunk is kept for the producer's next one: a steady stream
  // of items then allocates nothing.
  void Recycle(Chunk* chunk) { delete spare_.exchange(chunk, std::memory_order_acq_rel); }

  // Consumer side.
  Chunk* head_;
  size_t head_index_ = 0;
  // Producer side, on its own cache line so the two threads do not share one.
  alignas(64) Chunk* tail_;
  size_t tail_index_ = 0;
  std::atomic<Chunk*> spare_{nullptr};
};

}  // namespace kvxfer
