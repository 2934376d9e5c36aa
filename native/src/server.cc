// The calls, their completion queue and the event queue, on the queue's thread without the
// GIL; Python's thread only takes events (Take) and hands answers over (Submit).
#include "server.h"

#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/support/proto_buffer_reader.h>
#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

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

// How many calls of each kind are requested ahead, so that calls arriving together are
// matched at once rather than one per turn of the queue's thread.
constexpr int kInferRequests = 32;
constexpr int kGenericRequests = 4;

void Send(Answer& answer) {
  if (!answer.trailing.empty()) answer.call->AddTrailing(answer.trailing);
  if (answer.response) {
    auto buffer = std::make_unique<grpc::ByteBuffer>();
    bool own = false;
    grpc::Status status = grpc::SerializationTraits<inference::ModelInferResponse>::Serialize(
        *answer.response, buffer.get(), &own);
    if (status.ok()) {
      answer.call->Write(std::move(buffer));
    } else {
      answer.call->Fail(status);
    }
  } else if (answer.message) {
    answer.call->Write(std::move(answer.message));
  } else if (answer.close) {
    answer.call->Close(grpc::Status::OK);
  } else {
    answer.call->Fail(answer.status);
  }
}

// ---- Call --------------------------------------------------------------------------------

Call::Call(Core* core, uint64_t id) : core_(core), id_(id) {}

void Call::Begin() {
  context().AsyncNotifyWhenDone(&done_);  // delivered only if the call starts
  Request();
}

void Call::Complete(Op::Kind kind, bool ok) {
  switch (kind) {
    case Op::kRequested:
      OnRequested(ok);
      break;
    case Op::kRead:
      ReadDone(ok);
      break;
    case Op::kWrite:
      WriteDone(ok);
      break;
    case Op::kFinish:
      break;
    case Op::kDone:
      OnDone();
      break;
    case Op::kAnswers:  // Core's own tag, never a call's
      break;
  }
  bool over;
  bool admitted;
  {
    std::lock_guard<std::mutex> lock(mu_);
    over = --outstanding_ == 0;
    admitted = admitted_;
  }
  if (over) {
    if (admitted) core_->Release();
    core_->Forget(id_);  // may delete this
  }
}

void Call::OnRequested(bool ok) {
  if (!ok) return;  // the server is shutting down: the call never started
  core_->Spawn(infer());
  bool admitted = core_->Admit();
  {
    std::lock_guard<std::mutex> lock(mu_);
    Hold();  // the done tag, now that the call has started
    admitted_ = admitted;
    if (!admitted) {
      finished_ = true;
      Hold();
    }
  }
  if (admitted) {
    Started();
  } else {
    StartFinish(core_->Refusal());
  }
}

void Call::OnDone() {
  if (!context().IsCancelled()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return;
    // The call is over for gRPC: no Finish is needed, answers from Python are ignored, and
    // operations still outstanding complete (not ok) before the call is forgotten.
    finished_ = true;
    close_requested_ = true;
  }
  core_->Post(Event{EventKind::kCancel, id_, {}, {}, nullptr, {}});
}

void Call::Fail(grpc::Status status) {
  if (streaming_) {
    Close(std::move(status));
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return;
    finished_ = true;
    Hold();
  }
  StartFinish(status);
}

void Call::AddTrailing(const Metadata& metadata) {
  std::lock_guard<std::mutex> lock(mu_);
  if (finished_) return;
  for (const auto& [key, value] : metadata) context().AddTrailingMetadata(key, value);
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
    if (writing_) return;  // WriteDone starts it
    writing_ = true;
    Hold();
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
    if (writing_) return;  // WriteDone finishes once the queue is out
    finished_ = true;
    Hold();
  }
  StartFinish(status);
}

void Call::WriteDone(bool ok) {
  grpc::ByteBuffer* next = nullptr;
  bool finish = false;
  grpc::Status status;
  {
    std::lock_guard<std::mutex> lock(mu_);
    writes_.pop_front();
    if (ok && !finished_ && !writes_.empty()) {
      next = writes_.front().get();
      Hold();
    } else {
      writing_ = false;
      writes_.clear();  // not ok: the client is gone, and OnDone ends the call
      if (close_requested_ && !finished_) {
        finished_ = true;
        finish = true;
        status = close_status_;
        Hold();
      }
    }
  }
  if (next != nullptr) {
    StartWrite(next);
  } else if (finish) {
    StartFinish(status);
  }
}

// ---- InferCall ---------------------------------------------------------------------------

InferCall::InferCall(Core* core, uint64_t id) : Call(core, id) {}

void InferCall::Request() {
  core_->infer_service().RequestInfer(&context_, &request_, &responder_, core_->queue(),
                                      &requested_);
}

void InferCall::Started() {
  if (!request_.Valid()) {
    Fail(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the call carried no request message"));
    return;
  }
  auto decoded = std::make_shared<inference::ModelInferRequest>();
  grpc::ProtoBufferReader reader(&request_);
  bool parsed = decoded->ParseFromZeroCopyStream(&reader);
  if (!parsed) {
    Fail(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                      "the ModelInferRequest could not be parsed (malformed protobuf)"));
    return;
  }
  Metadata metadata = core_->SelectedMetadata(context_);
  if (!DecodedHere(*decoded)) {
    core_->Post(Event{EventKind::kUnary, id_, kInferMethod, Flatten(request_), nullptr,
                      std::move(metadata)});
  } else {
    core_->Post(Event{EventKind::kInfer, id_, {}, {}, std::move(decoded), std::move(metadata)});
  }
  request_.Clear();
}

void InferCall::Respond(std::unique_ptr<grpc::ByteBuffer> response) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return;
    finished_ = true;
    Hold();
    last_ = std::move(response);
  }
  responder_.Finish(*last_, grpc::Status::OK, &finish_);
}

void InferCall::StartFinish(const grpc::Status& status) {
  if (status.ok()) {  // FinishWithError asserts on OK; an OK here means an empty response
    responder_.Finish(grpc::ByteBuffer(), status, &finish_);
  } else {
    responder_.FinishWithError(status, &finish_);
  }
}

// ---- GenericCall -------------------------------------------------------------------------

GenericCall::GenericCall(Core* core, uint64_t id) : Call(core, id) {}

void GenericCall::Request() {
  core_->generic_service().RequestCall(&context_, &stream_, core_->queue(), core_->queue(),
                                       &requested_);
}

void GenericCall::Started() {
  streaming_ = context_.method() == kStreamMethod;
  if (streaming_) {
    core_->Post(
        Event{EventKind::kStreamOpen, id_, {}, {}, nullptr, core_->SelectedMetadata(context_)});
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    Hold();
  }
  stream_.Read(&incoming_, &read_);
}

void GenericCall::ReadDone(bool ok) {
  if (!streaming_) {
    if (!ok) {
      Fail(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the call carried no request message"));
      return;
    }
    core_->Post(Event{EventKind::kUnary, id_, context_.method(), Flatten(incoming_), nullptr,
                      core_->SelectedMetadata(context_)});
    return;
  }
  if (!ok) {
    core_->Post(Event{EventKind::kStreamEnd, id_, {}, {}, nullptr, {}});
    return;
  }
  core_->Post(Event{EventKind::kStreamMessage, id_, {}, Flatten(incoming_), nullptr, {}});
  incoming_.Clear();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return;  // ended by an error or a cancellation: nothing more to read
    Hold();
  }
  stream_.Read(&incoming_, &read_);
}

void GenericCall::Respond(std::unique_ptr<grpc::ByteBuffer> response) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return;
    finished_ = true;
    Hold();
    last_ = std::move(response);
  }
  stream_.WriteAndFinish(*last_, grpc::WriteOptions(), grpc::Status::OK, &finish_);
}

void GenericCall::StartWrite(grpc::ByteBuffer* message) { stream_.Write(*message, &write_); }

void GenericCall::StartFinish(const grpc::Status& status) { stream_.Finish(status, &finish_); }

// ---- InferService ------------------------------------------------------------------------

// What grpc_cpp_plugin generates for one method marked raw (bytes in, bytes out), without the
// other methods it would register too: those must stay with the generic service.
InferService::InferService() {
  AddMethod(new grpc::internal::RpcServiceMethod(
      kInferMethod, grpc::internal::RpcMethod::NORMAL_RPC, nullptr));
  MarkMethodRaw(0);
}

void InferService::RequestInfer(grpc::ServerContext* context, grpc::ByteBuffer* request,
                                grpc::ServerAsyncResponseWriter<grpc::ByteBuffer>* responder,
                                grpc::ServerCompletionQueue* queue, void* tag) {
  RequestAsyncUnary(0, context, request, responder, queue, queue, tag);
}

// ---- Core --------------------------------------------------------------------------------

Core::Core(std::vector<std::string> metadata_keys, int max_calls)
    : metadata_keys_(std::move(metadata_keys)),
      max_calls_(max_calls),
      event_fd_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
  if (event_fd_ < 0) throw std::runtime_error(std::string("eventfd: ") + std::strerror(errno));
}

Core::~Core() { close(event_fd_); }

void Core::Register(grpc::ServerBuilder& builder) {
  builder.RegisterService(&infer_service_);
  builder.RegisterAsyncGenericService(&generic_service_);
  completion_queue_ = builder.AddCompletionQueue();
}

void Core::Run() {
  for (int i = 0; i < kInferRequests; ++i) Spawn(true);
  for (int i = 0; i < kGenericRequests; ++i) Spawn(false);
  void* tag = nullptr;
  bool ok = false;
  while (completion_queue_->Next(&tag, &ok)) {
    Op* op = static_cast<Op*>(tag);
    if (op == &answers_op_) {
      SendAnswers();
    } else {
      op->call->Complete(op->kind, ok);
    }
  }
}

void Core::Stop() {
  {
    // Every call is over once the server has shut down, but its last completions may still
    // be on their way here; the queue must not shut down under them.
    std::unique_lock<std::mutex> lock(calls_mu_);
    calls_gone_.wait(lock, [this] { return calls_.empty(); });
  }
  {
    std::lock_guard<std::mutex> lock(answers_mu_);
    closed_ = true;
  }
  completion_queue_->Shutdown();
}

// Answers are sent on the queue's thread rather than on Python's: each call finished from
// another thread costs a wake-up of the polling thread (an eventfd write and a context
// switch) and hands gRPC's write work to its executor, while one alarm here wakes it once
// per group, and the event loop goes on meanwhile. The alarm's deadline is in the past so
// that it fires at once: one set for "now" waited for gRPC's next timer tick (the p50 of a
// lone client went from 0.36 to 1.0 ms).
void Core::Submit(std::vector<Answer> answers) {
  if (answers.empty()) return;
  std::lock_guard<std::mutex> lock(answers_mu_);
  if (closed_) return;  // every call is over
  for (Answer& answer : answers) answers_.push_back(std::move(answer));
  if (answers_due_) return;
  answers_due_ = true;
  alarm_.Set(completion_queue_.get(), std::chrono::system_clock::now() - std::chrono::seconds(1),
             &answers_op_);
}

// Corked, the writes of a group's answers leave in one segment per connection when the
// group is sent, and each client is woken once: uncorked, each write woke its client, which
// preempted this thread before the next answer (perf_analyzer at c=16 on two cores: 0.8
// involuntary context switches per inference, 0.2 corked; see BENCHMARKS.md).
void Core::SendAnswers() {
  std::vector<Answer> answers;
  {
    std::lock_guard<std::mutex> lock(answers_mu_);
    answers_due_ = false;
    answers.swap(answers_);
  }
  std::vector<int> corked;
  if (answers.size() > 1) corked = connections_.Cork(answers);
  for (Answer& answer : answers) Send(answer);
  Connections::Uncork(corked);
}

// ---- Connections -------------------------------------------------------------------------

namespace {

int PortOf(const sockaddr_storage& address) {
  if (address.ss_family == AF_INET) {
    return ntohs(reinterpret_cast<const sockaddr_in&>(address).sin_port);
  }
  if (address.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6&>(address).sin6_port);
  }
  return 0;
}

// "ipv4:127.0.0.1:51234" or "ipv6:[::1]:51234" -> 51234; 0 for anything else ("unix:...").
int PeerPort(const std::string& peer) {
  if (peer.rfind("ipv", 0) != 0) return 0;
  size_t colon = peer.rfind(':');
  if (colon == std::string::npos) return 0;
  return std::atoi(peer.c_str() + colon + 1);
}

}  // namespace

// Every connected TCP socket of this process whose local port is the listening port.
void Connections::Scan() {
  scanned_ = std::chrono::steady_clock::now();
  by_peer_port_.clear();
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return;
  int own = dirfd(dir);
  while (dirent* entry = readdir(dir)) {
    int fd = std::atoi(entry->d_name);
    if (fd <= 2 || fd == own) continue;
    struct stat info;
    if (fstat(fd, &info) != 0 || !S_ISSOCK(info.st_mode)) continue;
    sockaddr_storage address;
    socklen_t length = sizeof address;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) continue;
    if (PortOf(address) != port_) continue;
    length = sizeof address;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) continue;
    int peer_port = PortOf(address);
    if (peer_port != 0) by_peer_port_.emplace(peer_port, fd);
  }
  closedir(dir);
}

void Connections::Find(int peer_port, std::vector<int>& sockets) const {
  auto [first, last] = by_peer_port_.equal_range(peer_port);
  for (auto it = first; it != last; ++it) {
    if (std::find(sockets.begin(), sockets.end(), it->second) == sockets.end()) {
      sockets.push_back(it->second);
    }
  }
}

std::vector<int> Connections::Cork(const std::vector<Answer>& answers) {
  std::vector<int> sockets;
  if (port_ == 0) return sockets;
  // A new connection is looked for at most every 100 ms, and the map is renewed every
  // second, so that a closed connection's entry does not stand for a new one for long.
  auto now = std::chrono::steady_clock::now();
  bool may_scan = now - scanned_ > std::chrono::milliseconds(100);
  if (now - scanned_ > std::chrono::seconds(1)) {
    Scan();
    may_scan = false;
  }
  std::vector<int> peer_ports;
  for (const Answer& answer : answers) {
    int peer_port = PeerPort(answer.call->Peer());
    if (peer_port == 0) continue;
    if (std::find(peer_ports.begin(), peer_ports.end(), peer_port) != peer_ports.end()) continue;
    peer_ports.push_back(peer_port);
    if (may_scan && by_peer_port_.count(peer_port) == 0) {
      Scan();
      may_scan = false;
    }
    Find(peer_port, sockets);
  }
  const int on = 1;
  auto failed = std::remove_if(sockets.begin(), sockets.end(), [&](int fd) {
    return setsockopt(fd, IPPROTO_TCP, TCP_CORK, &on, sizeof on) != 0;
  });
  sockets.erase(failed, sockets.end());
  if (!sockets.empty()) corked_.fetch_add(1, std::memory_order_relaxed);
  return sockets;
}

void Connections::Uncork(const std::vector<int>& sockets) {
  const int off = 0;
  for (int fd : sockets) setsockopt(fd, IPPROTO_TCP, TCP_CORK, &off, sizeof off);
}

void Core::Spawn(bool infer) {
  if (stopping_) return;
  uint64_t id = next_id_.fetch_add(1, std::memory_order_relaxed);
  std::shared_ptr<Call> call;
  if (infer) {
    call = std::make_shared<InferCall>(this, id);
  } else {
    call = std::make_shared<GenericCall>(this, id);
  }
  {
    std::lock_guard<std::mutex> lock(calls_mu_);
    calls_.emplace(id, call);
  }
  call->Begin();
}

Metadata Core::SelectedMetadata(const grpc::ServerContext& context) const {
  Metadata selected;
  if (metadata_keys_.empty()) return selected;
  const auto& sent = context.client_metadata();
  for (const std::string& key : metadata_keys_) {
    auto it = sent.find(key);
    if (it != sent.end()) {
      selected.emplace_back(key, std::string(it->second.data(), it->second.size()));
    }
  }
  return selected;
}

// grpc.aio's words for the same refusal, and the flag that sets the limit.
grpc::Status Core::Refusal() const {
  return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                      "Concurrent RPC limit exceeded! (--grpc-max-concurrent-rpcs " +
                          std::to_string(max_calls_) + ")");
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

// A call counts from its start until its last operation completes, as in grpc.aio.
bool Core::Admit() {
  if (max_calls_ <= 0) return true;
  if (calls_in_flight_.fetch_add(1, std::memory_order_relaxed) < max_calls_) return true;
  calls_in_flight_.fetch_sub(1, std::memory_order_relaxed);
  return false;
}

void Core::Release() {
  if (max_calls_ > 0) calls_in_flight_.fetch_sub(1, std::memory_order_relaxed);
}

void Core::Forget(uint64_t call_id) {
  std::shared_ptr<Call> released;  // destroyed outside the lock
  std::lock_guard<std::mutex> lock(calls_mu_);
  auto it = calls_.find(call_id);
  if (it != calls_.end()) {
    released = std::move(it->second);
    calls_.erase(it);
  }
  if (calls_.empty()) calls_gone_.notify_all();
}

}  // namespace conveyor
