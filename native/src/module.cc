// The Python side of the native front end: the server object the event loop drives.
//
// Python calls `drain()` when the eventfd is readable and gets every queued event as a
// tuple (see conveyor_grpc_native/_native.pyi); it answers any number of calls with one
// `finish(answers)`. Input tensors reach Python as read-only buffers over the decoded
// message's own bytes, which stay alive as long as any array made from them.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <pthread.h>

#include <chrono>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "server.h"

namespace py = pybind11;

namespace conveyor {
namespace {

// Bytes inside a decoded request, kept alive by a reference to the whole message.
struct Blob {
  std::shared_ptr<const inference::ModelInferRequest> owner;
  const std::string* bytes;
};

py::object Parameters(const google::protobuf::Map<std::string, inference::InferParameter>& map) {
  if (map.empty()) return py::none();
  py::dict out;
  for (const auto& [key, p] : map) {
    py::object value = py::none();
    switch (p.parameter_choice_case()) {
      case inference::InferParameter::kBoolParam: value = py::bool_(p.bool_param()); break;
      case inference::InferParameter::kInt64Param: value = py::int_(p.int64_param()); break;
      case inference::InferParameter::kStringParam: value = py::str(p.string_param()); break;
      case inference::InferParameter::kDoubleParam: value = py::float_(p.double_param()); break;
      case inference::InferParameter::kUint64Param: value = py::int_(p.uint64_param()); break;
      default: break;
    }
    out[py::str(key)] = value;
  }
  return out;
}

py::object MetadataOf(const Metadata& metadata) {
  if (metadata.empty()) return py::none();
  py::dict out;
  for (const auto& [key, value] : metadata) out[py::str(key)] = py::str(value);
  return out;
}

py::tuple InferTuple(const Event& event) {
  const inference::ModelInferRequest& r = *event.request;
  py::list inputs(r.inputs_size());
  for (int i = 0; i < r.inputs_size(); ++i) {
    const auto& input = r.inputs(i);
    py::tuple shape(input.shape_size());
    for (int d = 0; d < input.shape_size(); ++d) shape[d] = py::int_(input.shape(d));
    Blob blob{event.request, &r.raw_input_contents(i)};
    inputs[i] = py::make_tuple(py::str(input.name()), py::str(input.datatype()), shape,
                               py::cast(std::move(blob)));
  }
  py::object outputs = py::none();
  if (r.outputs_size() > 0) {
    py::list names(r.outputs_size());
    for (int i = 0; i < r.outputs_size(); ++i) names[i] = py::str(r.outputs(i).name());
    outputs = names;
  }
  return py::make_tuple(static_cast<int>(EventKind::kInfer), event.call_id,
                        py::str(r.model_name()), py::str(r.model_version()), py::str(r.id()),
                        inputs, Parameters(r.parameters()), outputs, MetadataOf(event.metadata));
}

py::tuple EventTuple(const Event& event) {
  const int kind = static_cast<int>(event.kind);
  switch (event.kind) {
    case EventKind::kInfer:
      return InferTuple(event);
    case EventKind::kUnary:
      return py::make_tuple(kind, event.call_id, py::str(event.method), py::bytes(event.payload),
                            MetadataOf(event.metadata));
    case EventKind::kStreamOpen:
      return py::make_tuple(kind, event.call_id, MetadataOf(event.metadata));
    case EventKind::kStreamMessage:
      return py::make_tuple(kind, event.call_id, py::bytes(event.payload));
    default:
      return py::make_tuple(kind, event.call_id);
  }
}

// A C-contiguous view of any buffer (bytes, a numpy array); raises if it is not one.
class View {
 public:
  explicit View(const py::handle& object) {
    if (PyObject_GetBuffer(object.ptr(), &view_, PyBUF_C_CONTIGUOUS) != 0) {
      throw py::error_already_set();
    }
  }
  ~View() { PyBuffer_Release(&view_); }
  View(const View&) = delete;
  View& operator=(const View&) = delete;
  const char* data() const { return static_cast<const char*>(view_.buf); }
  size_t size() const { return static_cast<size_t>(view_.len); }

 private:
  Py_buffer view_{};
};

std::unique_ptr<inference::ModelInferResponse> InferResponse(const py::tuple& answer) {
  auto msg = std::make_unique<inference::ModelInferResponse>();
  msg->set_model_name(answer[2].cast<std::string>());
  msg->set_model_version(answer[3].cast<std::string>());
  msg->set_id(answer[4].cast<std::string>());
  for (const py::handle& item : answer[5].cast<py::list>()) {
    auto output = item.cast<py::tuple>();
    auto* tensor = msg->add_outputs();
    tensor->set_name(output[0].cast<std::string>());
    tensor->set_datatype(output[1].cast<std::string>());
    for (const py::handle& dim : output[2]) tensor->add_shape(dim.cast<int64_t>());
    View data(output[3]);
    msg->add_raw_output_contents()->assign(data.data(), data.size());
  }
  return msg;
}

std::unique_ptr<grpc::ByteBuffer> Message(const py::handle& object) {
  View data(object);
  grpc::Slice slice(data.data(), data.size());
  return std::make_unique<grpc::ByteBuffer>(&slice, 1);
}

// Answer kinds, the second element of each answer tuple.
enum AnswerKind : int { kInferResponse = 0, kMessage = 1, kError = 2, kClose = 3 };

// gRPC asserts on an OK "error" and on codes it does not know: those become INTERNAL.
grpc::StatusCode ErrorCode(int code) {
  if (code <= 0 || code > grpc::StatusCode::UNAUTHENTICATED) return grpc::StatusCode::INTERNAL;
  return static_cast<grpc::StatusCode>(code);
}

Answer Internal(std::shared_ptr<Call> call) {
  Answer out;
  out.call = std::move(call);
  out.status = grpc::Status(grpc::StatusCode::INTERNAL, "internal server error");
  return out;
}

// Each answer kind's tuple length; one element more is trailing metadata, (key, value) pairs.
size_t AnswerSize(int kind) {
  switch (kind) {
    case kInferResponse: return 6;
    case kMessage: return 3;
    case kError: return 4;
    case kClose: return 2;
    default: throw std::invalid_argument("unknown answer kind");
  }
}

Answer TakeAnswer(const py::tuple& answer, std::shared_ptr<Call> call) {
  Answer out;
  out.call = std::move(call);
  const int kind = answer[1].cast<int>();
  const size_t size = AnswerSize(kind);
  if (answer.size() == size + 1) {
    for (const py::handle& pair : answer[size]) {
      auto item = pair.cast<py::tuple>();
      out.trailing.emplace_back(item[0].cast<std::string>(), item[1].cast<std::string>());
    }
  } else if (answer.size() != size) {
    throw std::invalid_argument("answer tuple of the wrong length");
  }
  switch (kind) {
    case kInferResponse:
      out.response = InferResponse(answer);
      break;
    case kMessage:
      out.message = Message(answer[2]);
      break;
    case kError:
      out.status = grpc::Status(ErrorCode(answer[2].cast<int>()), answer[3].cast<std::string>());
      break;
    case kClose:
      out.close = true;
      break;
    default:
      throw std::invalid_argument("unknown answer kind");
  }
  return out;
}

// TLS settings as Python passes them: the server's key and certificate chain (PEM), the
// root certificates that sign client certificates (PEM, empty for none), and whether a
// client must present one (mutual TLS).
using Tls = std::tuple<std::string, std::string, std::string, bool>;

// grpc.ssl_server_credentials' choices, so both front ends treat clients alike: without
// mutual TLS no client certificate is asked for; with it, one signed by the roots is required.
std::shared_ptr<grpc::ServerCredentials> Credentials(const std::optional<Tls>& tls) {
  if (!tls) return grpc::InsecureServerCredentials();
  const auto& [key, chain, roots, mutual] = *tls;
  grpc::SslServerCredentialsOptions options(
      mutual ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
             : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  options.pem_root_certs = roots;
  options.pem_key_cert_pairs.push_back({key, chain});
  return grpc::SslServerCredentials(options);
}

// gRPC channel arguments for the server's connections (keepalive, pings, connection age),
// by name: the same list grpc.aio takes as server options.
using ConnectionOptions = std::vector<std::pair<std::string, int>>;

class Server {
 public:
  Server(std::vector<std::string> metadata_keys, int max_message_bytes, int max_calls,
         ConnectionOptions channel_arguments)
      : core_(std::make_unique<Core>(std::move(metadata_keys), max_calls)),
        max_message_bytes_(max_message_bytes),
        channel_arguments_(std::move(channel_arguments)) {}

  int Start(const std::string& address, const std::optional<Tls>& tls) {
    if (server_) throw std::runtime_error("the server is already started");
    int port = 0;
    {
      py::gil_scoped_release release;
      grpc::ServerBuilder builder;
      builder.AddListeningPort(address, Credentials(tls), &port);
      builder.SetMaxReceiveMessageSize(max_message_bytes_);
      builder.SetMaxSendMessageSize(max_message_bytes_);
      for (const auto& [name, value] : channel_arguments_) {
        builder.AddChannelArgument(name, value);
      }
      core_->Register(builder);
      server_ = builder.BuildAndStart();
      if (server_ && port != 0) {
        core_->Listen(port);
        poller_ = std::thread([core = core_.get()] {
          pthread_setname_np(pthread_self(), "conveyor-grpc");  // as profilers show it
          core->Run();
        });
      }
    }
    if (!server_ || port == 0) {
      {
        py::gil_scoped_release release;
        Stop(std::chrono::system_clock::now());
      }
      // gRPC logs the cause; with TLS it is most often a certificate or key it cannot read.
      throw std::runtime_error("cannot bind gRPC to " + address +
                               (tls ? " over TLS (is the server's key the certificate's?)" : ""));
    }
    return port;
  }

  int Fileno() const { return core_->fd(); }
  uint64_t CorkedGroups() const { return core_->corked_groups(); }

  // Every queued event as a tuple; a call whose event cannot be converted fails with
  // INTERNAL here rather than wait for a reply that would never come.
  py::list Drain() {
    std::vector<Event> events = core_->Take();
    py::list out;
    std::vector<Answer> failed;
    for (const Event& event : events) {
      try {
        out.append(EventTuple(event));
      } catch (const std::exception&) {
        if (std::shared_ptr<Call> call = core_->Find(event.call_id)) {
          failed.push_back(Internal(std::move(call)));
        }
      }
    }
    core_->Submit(std::move(failed));
    return out;
  }

  // Every call answered is finished (by the queue's thread, see Core::Submit); one whose
  // answer cannot be read fails with INTERNAL, and the first such error is raised once all
  // the others are submitted.
  void Finish(const py::list& answers) {
    std::vector<Answer> taken;
    taken.reserve(answers.size());
    std::string error;
    for (const py::handle& item : answers) {
      std::shared_ptr<Call> call;
      try {
        auto answer = item.cast<py::tuple>();
        call = core_->Find(answer[0].cast<uint64_t>());
        if (!call) continue;  // cancelled and released meanwhile
        taken.push_back(TakeAnswer(answer, call));
      } catch (const std::exception& exc) {
        if (error.empty()) error = exc.what();
        if (call) taken.push_back(Internal(std::move(call)));
      }
    }
    core_->Submit(std::move(taken));
    if (!error.empty()) throw std::runtime_error("bad answer: " + error);
  }

  void Fail(uint64_t call_id, int code, const std::string& message) {
    std::shared_ptr<Call> call = core_->Find(call_id);
    if (!call) return;
    std::vector<Answer> failed(1);
    failed[0].call = std::move(call);
    failed[0].status = grpc::Status(ErrorCode(code), message);
    core_->Submit(std::move(failed));
  }

  ~Server() {
    if (server_) {
      py::gil_scoped_release release;
      Stop(std::chrono::system_clock::now());
    }
  }
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Refuse new calls at once; calls still open after `grace_s` are cancelled.
  void Shutdown(double grace_s) {
    if (!server_) return;
    py::gil_scoped_release release;
    auto deadline = std::chrono::system_clock::now() +
                    std::chrono::duration_cast<std::chrono::system_clock::duration>(
                        std::chrono::duration<double>(grace_s));
    Stop(deadline);
  }

 private:
  // Without the GIL: the server first (calls past the deadline are cancelled), then the
  // queue's thread once every call is over.
  void Stop(std::chrono::system_clock::time_point deadline) {
    if (!server_) return;
    core_->Stopping();
    server_->Shutdown(deadline);
    server_->Wait();
    if (poller_.joinable()) {
      core_->Stop();
      poller_.join();
    }
    server_.reset();
  }

  std::unique_ptr<Core> core_;  // declared first: it must outlive the server using it
  std::unique_ptr<grpc::Server> server_;
  std::thread poller_;  // runs core_->Run()
  int max_message_bytes_;
  ConnectionOptions channel_arguments_;
};

}  // namespace
}  // namespace conveyor

PYBIND11_MODULE(_native, m) {
  using conveyor::Blob;
  using conveyor::ConnectionOptions;
  using conveyor::Server;
  m.doc() = "inference.GRPCInferenceService on gRPC C++, driven by an asyncio event loop";

  py::class_<Blob>(m, "Blob", py::buffer_protocol())
      .def_buffer([](Blob& blob) {
        return py::buffer_info(const_cast<char*>(blob.bytes->data()), 1,
                               py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(blob.bytes->size())}, {1}, true);
      })
      .def("__len__", [](const Blob& blob) { return blob.bytes->size(); });

  py::class_<Server>(m, "Server")
      .def(py::init<std::vector<std::string>, int, int, ConnectionOptions>(),
           py::arg("metadata_keys"), py::arg("max_message_bytes"),
           py::arg("max_concurrent_rpcs"), py::arg("channel_arguments") = ConnectionOptions())
      .def("start", &Server::Start, py::arg("address"), py::arg("tls") = py::none())
      .def("fileno", &Server::Fileno)
      .def("corked_groups", &Server::CorkedGroups,
           "How many groups of answers went out with their connections corked.")
      .def("drain", &Server::Drain)
      .def("finish", &Server::Finish, py::arg("answers"))
      .def("fail", &Server::Fail, py::arg("call_id"), py::arg("code"), py::arg("message"))
      .def("shutdown", &Server::Shutdown, py::arg("grace_s"));
}
