// inference.GRPCInferenceService on gRPC C++, handing calls to Python in groups.
//
// One thread of ours drives gRPC through its completion queue (the async API): it polls the
// sockets, decodes ModelInferRequest, queues an event for Python, and sends Python's
// answers. gRPC's callback API would run the same work on two threads of its own plus its
// executor, handing each call between them, and a call finished from Python's thread wakes
// the polling thread once per call; on a small machine those hand-offs (context switches)
// cost more than the work. Here a group of calls costs two: the wake of the event loop and,
// for the answers, the wake of this thread.
//
// ModelInfer is a registered method, so gRPC reads its whole request before handing it over;
// every other method, known or not, comes through the generic service, so one port serves
// them all. The event queue wakes the event loop through an eventfd only when it goes from
// empty to non-empty, so one wake-up and one GIL acquisition take every call that arrived
// meanwhile. Python answers a group of calls with one `finish` call, which hands them to
// this thread; it serialises the messages and finishes the calls. No gRPC thread takes the
// GIL.
#pragma once

#include <grpcpp/alarm.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/async_unary_call.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "grpc_service.pb.h"

namespace conveyor {

// What Python receives, as the first element of each drained tuple.
enum class EventKind : int {
  kInfer = 0,          // a ModelInfer call decoded here (raw_input_contents only)
  kUnary = 1,          // any other unary call (or a ModelInfer that needs Python's decoder)
  kStreamOpen = 2,     // a ModelStreamInfer call began
  kStreamMessage = 3,  // one request message on an open stream
  kStreamEnd = 4,      // the client half-closed the stream
  kCancel = 5,         // the call was cancelled (client gone, deadline, shutdown)
};

using Metadata = std::vector<std::pair<std::string, std::string>>;

struct Event {
  EventKind kind;
  uint64_t call_id;
  std::string method;   // kUnary: the full method path
  std::string payload;  // kUnary, kStreamMessage: the serialised request
  std::shared_ptr<const inference::ModelInferRequest> request;  // kInfer
  Metadata metadata;    // kInfer, kUnary, kStreamOpen: the configured keys present
};

class Core;
class Call;

// A completion queue tag: which operation of which call completed (kAnswers, without a
// call: Python has submitted answers).
struct Op {
  enum Kind { kRequested, kRead, kWrite, kFinish, kDone, kAnswers };
  Call* call;
  Kind kind;
};

// One answer from Python: a response to serialise, a message, a status, or the end of a
// stream. Taken under the GIL, sent (Send) on the queue's thread.
struct Answer {
  std::shared_ptr<Call> call;
  std::unique_ptr<inference::ModelInferResponse> response;
  std::unique_ptr<grpc::ByteBuffer> message;
  grpc::Status status;
  bool close = false;
  Metadata trailing;  // sent with the call's status (a request id), when it ends
};

void Send(Answer& answer);

// One call, from the request for it until every operation on it has completed. Python
// refers to it by id. `Core` keeps it registered (alive) while operations are outstanding;
// any holder of a shared_ptr (an answer on its way) keeps it alive until it lets go. Every
// operation starts on the queue's thread (Python's answers come through Core::Submit); `mu_`
// guards the state all the same, for the price of a lock nobody contends, so that no path
// depends on which thread it runs on to be correct.
class Call {
 public:
  Call(Core* core, uint64_t id);
  virtual ~Call() = default;

  // Unary answers: exactly one of these finishes the call; later ones are ignored.
  virtual void Respond(std::unique_ptr<grpc::ByteBuffer> response) = 0;
  void Fail(grpc::Status status);
  // Streaming answers: messages are written in order, then the stream is finished.
  void Write(std::unique_ptr<grpc::ByteBuffer> message);
  void Close(grpc::Status status);
  // Trailing metadata for the status the call ends with (ignored once it is finishing).
  void AddTrailing(const Metadata& metadata);

  // On the queue's thread: an operation completed.
  void Complete(Op::Kind kind, bool ok);
  virtual bool infer() const = 0;
  // The client's address as gRPC names it ("ipv4:127.0.0.1:51234").
  std::string Peer() { return context().peer(); }

 protected:
  virtual grpc::ServerContext& context() = 0;
  virtual void Request() = 0;  // ask gRPC for the next call of this kind, tagged requested_
  virtual void Started() = 0;  // the call arrived (admitted)
  virtual void ReadDone(bool ok) = 0;
  virtual void StartWrite(grpc::ByteBuffer* message) = 0;
  virtual void StartFinish(const grpc::Status& status) = 0;

  // Under mu_: one more operation outstanding (the caller starts it after unlocking).
  void Hold() { ++outstanding_; }
  bool streaming_ = false;

  Core* const core_;
  const uint64_t id_;
  Op requested_{this, Op::kRequested}, read_{this, Op::kRead}, write_{this, Op::kWrite},
      finish_{this, Op::kFinish}, done_{this, Op::kDone};

  std::mutex mu_;
  int outstanding_ = 1;           // the request for the call
  bool admitted_ = false;         // counted against the limit on calls in flight
  bool finished_ = false;         // Finish was started (or is due once the writes are out)
  bool close_requested_ = false;  // streaming: finish once the writes are out
  bool writing_ = false;
  grpc::Status close_status_;
  std::deque<std::unique_ptr<grpc::ByteBuffer>> writes_;
  std::unique_ptr<grpc::ByteBuffer> last_;  // the message the final op sends

 private:
  friend class Core;
  void Begin();  // the first Request, holding the done tag for when the call starts
  void OnRequested(bool ok);
  void OnDone();
  void WriteDone(bool ok);
};

// A ModelInfer call: the request arrives whole with the call.
class InferCall : public Call {
 public:
  InferCall(Core* core, uint64_t id);
  void Respond(std::unique_ptr<grpc::ByteBuffer> response) override;
  bool infer() const override { return true; }

 protected:
  grpc::ServerContext& context() override { return context_; }
  void Request() override;
  void Started() override;
  void ReadDone(bool /*ok*/) override {}                      // the request comes whole
  void StartWrite(grpc::ByteBuffer* /*message*/) override {}  // unary: Respond sends it
  void StartFinish(const grpc::Status& status) override;

 private:
  grpc::ServerContext context_;
  grpc::ByteBuffer request_;
  grpc::ServerAsyncResponseWriter<grpc::ByteBuffer> responder_{&context_};
};

// Any other call, unary or streaming, through the generic service.
class GenericCall : public Call {
 public:
  GenericCall(Core* core, uint64_t id);
  void Respond(std::unique_ptr<grpc::ByteBuffer> response) override;
  bool infer() const override { return false; }

 protected:
  grpc::ServerContext& context() override { return context_; }
  void Request() override;
  void Started() override;
  void ReadDone(bool ok) override;
  void StartWrite(grpc::ByteBuffer* message) override;
  void StartFinish(const grpc::Status& status) override;

 private:
  grpc::GenericServerContext context_;
  grpc::GenericServerAsyncReaderWriter stream_{&context_};
  grpc::ByteBuffer incoming_;
};

// ModelInfer as a registered method taking and giving bytes (the rest stay generic).
class InferService : public grpc::Service {
 public:
  InferService();
  void RequestInfer(grpc::ServerContext* context, grpc::ByteBuffer* request,
                    grpc::ServerAsyncResponseWriter<grpc::ByteBuffer>* responder,
                    grpc::ServerCompletionQueue* queue, void* tag);
};

// The sockets of the server's connections, found by the client's port, so that the answers
// of a group go out corked (TCP_CORK): several answers on one connection leave in one
// segment, and each client is woken once per group rather than once per answer. gRPC C++
// writes each call's answer as it is finished and gives no way to hold them or to reach the
// socket, so the sockets are found in /proc/self/fd by their local port (the listening
// port) and their peer's. A socket found here may have been closed and its number reused
// by the time it is corked: then corking fails (not a TCP socket) or holds some other TCP
// socket's writes for the few microseconds until it is uncorked, both harmless.
class Connections {
 public:
  void Listen(int port) { port_ = port; }
  // Corks the sockets the answers will be written to; returns them, for Uncork.
  std::vector<int> Cork(const std::vector<Answer>& answers);
  static void Uncork(const std::vector<int>& sockets);
  uint64_t corked() const { return corked_.load(std::memory_order_relaxed); }

 private:
  void Scan();
  void Find(int peer_port, std::vector<int>& sockets) const;

  int port_ = 0;
  std::unordered_multimap<int, int> by_peer_port_;  // the client's port -> the socket
  std::chrono::steady_clock::time_point scanned_{};
  std::atomic<uint64_t> corked_{0};  // groups sent corked
};

// What the calls and the Python-facing server share: the services and the completion
// queue, the event queue and its eventfd, the registry of calls by id, and the count of
// calls in flight.
class Core {
 public:
  // max_calls: calls in flight at once (a stream counts as one), 0 for no limit; beyond
  // it a call is answered RESOURCE_EXHAUSTED at once.
  Core(std::vector<std::string> metadata_keys, int max_calls);
  ~Core();

  void Register(grpc::ServerBuilder& builder);  // before BuildAndStart
  void Run();  // the queue's thread: request calls, then serve completions until Stop
  // Shutting down: no more calls are requested; then, once the server has shut down and
  // every call is over, the queue shuts down and Run returns.
  void Stopping() { stopping_ = true; }
  void Stop();

  InferService& infer_service() { return infer_service_; }
  grpc::AsyncGenericService& generic_service() { return generic_service_; }
  grpc::ServerCompletionQueue* queue() { return completion_queue_.get(); }

  void Post(Event event);
  std::vector<Event> Take();
  // From Python's thread: answers for the queue's thread to send, woken once per group.
  void Submit(std::vector<Answer> answers);

  std::shared_ptr<Call> Find(uint64_t call_id);
  Metadata SelectedMetadata(const grpc::ServerContext& context) const;
  grpc::Status Refusal() const;
  int fd() const { return event_fd_; }
  // Before Run: the port the server listens on, for corking its connections' answers.
  void Listen(int port) { connections_.Listen(port); }
  uint64_t corked_groups() const { return connections_.corked(); }

 private:
  friend class Call;
  bool Admit();
  void Release();  // an admitted call is over
  void Spawn(bool infer);  // request one more call of a kind
  void Forget(uint64_t call_id);
  void SendAnswers();

  const std::vector<std::string> metadata_keys_;
  const int max_calls_;
  std::atomic<int> calls_in_flight_{0};
  int event_fd_;
  std::atomic<uint64_t> next_id_{1};
  std::atomic<bool> stopping_{false};
  std::mutex queue_mu_;
  std::vector<Event> queue_;
  std::mutex calls_mu_;
  std::condition_variable calls_gone_;
  std::unordered_map<uint64_t, std::shared_ptr<Call>> calls_;
  InferService infer_service_;
  grpc::AsyncGenericService generic_service_;
  std::unique_ptr<grpc::ServerCompletionQueue> completion_queue_;
  std::mutex answers_mu_;
  std::vector<Answer> answers_;
  bool answers_due_ = false;  // the alarm is set: the queue's thread will take answers_
  bool closed_ = false;       // the queue is shut down: every call is over, answers are moot
  grpc::Alarm alarm_;         // how another thread puts a tag on the queue
  Op answers_op_{nullptr, Op::kAnswers};
  Connections connections_;  // the queue's thread's
};

}  // namespace conveyor
