// The calls and their shared queue: everything here runs on gRPC's threads, without the GIL.
#include "server.h"

#include <grpcpp/support/proto_buffer_reader.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace conveyor {
namespace {

constexpr char kInferMethod[] = "/inference.GRPCInferenceService/ModelInfer";
constexpr char kStreamMethod[] = "/inference.GRPCInferenceService/ModelStreamInfer";

std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  out.reserve(buffer.Length());
  for (const grpc::Slice& slice : slices) {
    out.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return out;
}

// The requests decoded here: every input in raw_input_contents, one blob per input, and no
// output parameters (classification). Anything else (typed contents, a count mismatch, ...)
// goes to Python's decoder whole, so its checks and messages stay the only ones.
bool DecodedHere(const inference::ModelInferRequest& request) {
  if (request.raw_input_contents_size() != request.inputs_size()) return false;
  for (const auto& input : request.inputs()) {
    if (input.has_contents()) return false;
  }
  for (const auto& output : request.outputs()) {
    if (!output.parameters().empty()) return false;
  }
  return true;
}

}  // namespace

// ---- Call -------------------------------------------------------------------------------

Call::Call(Core* core, grpc::GenericCallbackServerContext* context, uint64_t id)
    : core_(core),
      context_(context),
      id_(id),
      streaming_(context->method() == kStreamMethod),
      infer_(context->method() == kInferMethod) {}

void Call::Begin() {
  if (streaming_) {
    core_->Post(Event{EventKind::kStreamOpen, id_, {}, {}, nullptr, SelectedMetadata()});
  }
  StartRead(&incoming_);
}

Metadata Call::SelectedMetadata() const {
  Metadata selected;
  const auto& keys = core_->metadata_keys();
  if (keys.empty()) return selected;
  const auto& sent = context_->client_metadata();
  for (const std::string& key : keys) {
    auto it = sent.find(key);
    if (it != sent.end()) {
      selected.emplace_back(key, std::string(it->second.data(), it->second.size()));
    }
  }
  return selected;
}

void Call::OnReadDone(bool ok) {
  if (streaming_) {
    if (!ok) {
      core_->Post(Event{EventKind::kStreamEnd, id_, {}, {}, nullptr, {}});
      return;
    }
    core_->Post(Event{EventKind::kStreamMessage, id_, {}, Flatten(incoming_), nullptr, {}});
    incoming_.Clear();
    StartRead(&incoming_);
    return;
  }
  if (!ok) {
    Fail(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the call carried no request message"));
    return;
  }
  if (infer_) {
    ReadInfer();
  } else {
    ReadUnary();
  }
}

void Call::ReadUnary() {
  core_->Post(Event{EventKind::kUnary, id_, context_->method(), Flatten(incoming_), nullptr,
                    SelectedMetadata()});
}

void Call::ReadInfer() {
  auto request = std::make_shared<inference::ModelInferRequest>();
  grpc::ProtoBufferReader reader(&incoming_);
  if (!request->ParseFromZeroCopyStream(&reader)) {
    Fail(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                      "the ModelInferRequest could not be parsed (malformed protobuf)"));
    return;
  }
  if (!DecodedHere(*request)) {
    ReadUnary();
    return;
  }
  core_->Post(Event{EventKind::kInfer, id_, {}, {}, std::move(request), SelectedMetadata()});
}

bool Call::TakeFinish() {
  std::lock_guard<std::mutex> lock(mu_);
  if (finished_) return false;
  finished_ = true;
  return true;
}

void Call::Respond(std::unique_ptr<grpc::ByteBuffer> response) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return;
    finished_ = true;
    response_ = std::move(response);
  }
  StartWriteAndFinish(response_.get(), grpc::WriteOptions(), grpc::Status::OK);
}

void Call::Fail(grpc::Status status) {
  if (streaming_) {
    Close(std::move(status));
  } else if (TakeFinish()) {
    Finish(status);
  }
}

void Call::Write(std::unique_ptr<grpc::ByteBuffer> message) {
  if (!streaming_) {
    Respond(std::move(message));
    return;
  }
  grpc::ByteBuffer* next = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_ || close_requested_) return;
    writes_.push_back(std::move(message));
    if (writing_) return;
    writing_ = true;
    next = writes_.front().get();
  }
  StartWrite(next);
}

void Call::Close(grpc::Status status) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_ || close_requested_) return;
    close_requested_ = true;
    close_status_ = status;
    if (writing_) return;  // OnWriteDone finishes once the queue is out
    finished_ = true;
  }
  Finish(status);
}

void Call::OnWriteDone(bool ok) {
  grpc::ByteBuffer* next = nullptr;
  bool finish = false;
  grpc::Status status;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!writes_.empty()) writes_.pop_front();
    if (ok && !writes_.empty()) {
      next = writes_.front().get();
    } else {
      writing_ = false;
      if (!ok) writes_.clear();  // the client is gone; OnCancel finishes the call
      if (close_requested_ && !finished_) {
        finished_ = true;
        finish = true;
        status = close_status_;
      }
    }
  }
  if (next != nullptr) {
    StartWrite(next);
  } else if (finish) {
    Finish(status);
  }
}

void Call::OnCancel() {
  // Finished here, not by Python: a call must finish for gRPC to release it, and Python
  // may never answer (its task is cancelled, or the server is shutting down).
  if (TakeFinish()) {
    core_->Post(Event{EventKind::kCancel, id_, {}, {}, nullptr, {}});
    Finish(grpc::Status::CANCELLED);
  }
}

void Call::OnDone() {
  core_->Forget(id_);  // may delete this
}

// ---- Core -------------------------------------------------------------------------------

Core::Core(std::vector<std::string> metadata_keys)
    : metadata_keys_(std::move(metadata_keys)), event_fd_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
  if (event_fd_ < 0) throw std::runtime_error(std::string("eventfd: ") + std::strerror(errno));
}

Core::~Core() { close(event_fd_); }

grpc::ServerGenericBidiReactor* Core::CreateReactor(grpc::GenericCallbackServerContext* context) {
  uint64_t id = next_id_.fetch_add(1, std::memory_order_relaxed);
  auto call = std::make_shared<Call>(this, context, id);
  {
    std::lock_guard<std::mutex> lock(calls_mu_);
    calls_.emplace(id, call);
  }
  call->Begin();
  return call.get();
}

void Core::Post(Event event) {
  bool wake;
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    wake = queue_.empty();
    queue_.push_back(std::move(event));
  }
  // Only the first event of a group wakes the loop; Take() clears the fd before it swaps
  // the queue out, so an event pushed after the swap always finds the queue empty.
  if (wake) {
    uint64_t one = 1;
    ssize_t written = write(event_fd_, &one, sizeof one);
    (void)written;  // EAGAIN: the counter is already non-zero, the loop will wake
  }
}

std::vector<Event> Core::Take() {
  uint64_t count;
  ssize_t got = read(event_fd_, &count, sizeof count);
  (void)got;  // EAGAIN: nothing was signalled, the queue may still hold events
  std::vector<Event> events;
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    events.swap(queue_);
  }
  return events;
}

std::shared_ptr<Call> Core::Find(uint64_t call_id) {
  std::lock_guard<std::mutex> lock(calls_mu_);
  auto it = calls_.find(call_id);
  return it == calls_.end() ? nullptr : it->second;
}

void Core::Forget(uint64_t call_id) {
  std::shared_ptr<Call> released;  // destroyed outside the lock
  std::lock_guard<std::mutex> lock(calls_mu_);
  auto it = calls_.find(call_id);
  if (it != calls_.end()) {
    released = std::move(it->second);
    calls_.erase(it);
  }
}

}  // namespace conveyor
