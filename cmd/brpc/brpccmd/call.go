package brpccmd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/brpc-go/brpc"
)

type callConfig struct {
	gw      gatewayFlags
	headers headerFlags
	timeout time.Duration

	id, method, json string
	hasJSON          bool
}

// headerFlags collects -H flags.
type headerFlags []string

func (h *headerFlags) String() string { return strings.Join(*h, ", ") }

func (h *headerFlags) Set(v string) error {
	k, _, ok := strings.Cut(v, ":")
	if !ok || strings.TrimSpace(k) == "" {
		return fmt.Errorf("want 'name: value', not %q", v)
	}
	*h = append(*h, v)
	return nil
}

const callDetails = `The call goes to the server's gateway, which relays it to the client with
ID <client-id>. <method> is pkg.Service/Method or pkg.Service.Method; the
method's types come from the client's own server reflection (the client
registers google.golang.org/grpc/reflection on its *grpc.Server), read
through the same gateway. <json> is the request in protobuf's JSON form
(default {}); for a client- or bidi-streaming method it may hold several
JSON objects, one per message, or none. Each response message is printed
as JSON as it arrives.

Exit status: 0 when the call succeeds, 1 when it fails (its gRPC status is
printed: code and message), 2 for a mistake in the command line, an
unknown service or method, or JSON that does not fit the request type.`

func callFlags(Extensions) (*flag.FlagSet, func(io.Writer) error) {
	var cfg callConfig
	fs := flag.NewFlagSet("call", flag.ContinueOnError)
	cfg.gw.register(fs)
	fs.Var(&cfg.headers, "H", "a request header 'name: value' for the client's handler (repeatable)")
	fs.DurationVar(&cfg.timeout, "timeout", 10*time.Second, "the call's deadline, reflection included")
	return fs, func(stdout io.Writer) error {
		if err := cfg.gw.check(); err != nil {
			return err
		}
		if cfg.timeout <= 0 {
			return &badUsage{fmt.Sprintf("-timeout must be positive, not %v", cfg.timeout)}
		}
		args := fs.Args()
		if len(args) < 2 || len(args) > 3 {
			return &badUsage{fmt.Sprintf("call takes <client-id> <method> [<json>], not %d argument(s)", len(args))}
		}
		cfg.id, cfg.method = args[0], args[1]
		if len(args) == 3 {
			cfg.json, cfg.hasJSON = args[2], true
		}
		if cfg.id == "" {
			return &badUsage{"the client ID must not be empty"}
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
		defer cancel()
		return call(ctx, cfg, stdout)
	}
}

// call makes one call through the gateway and prints its responses.
func call(ctx context.Context, cfg callConfig, w io.Writer) error {
	service, method, err := splitMethod(cfg.method)
	if err != nil {
		return err
	}
	cc, err := cfg.gw.dial()
	if err != nil {
		return err
	}
	defer cc.Close()
	md := metadata.Pairs(brpc.GatewayTargetHeader, cfg.id)
	for _, h := range cfg.headers {
		k, v, _ := strings.Cut(h, ":")
		md.Append(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	ctx = metadata.NewOutgoingContext(ctx, md)

	files, err := filesOf(ctx, cc, service)
	if err != nil {
		return err
	}
	desc, err := findMethod(files, service, method)
	if err != nil {
		return err
	}
	types := dynamicpb.NewTypes(files)
	requests, err := requestsOf(cfg, desc, types)
	if err != nil {
		return err
	}

	full := "/" + service + "/" + method
	st, err := cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: desc.IsStreamingServer(), ClientStreams: desc.IsStreamingClient()}, full)
	if err != nil {
		return &rpcError{err}
	}
	for _, req := range requests {
		if err := st.SendMsg(req); err != nil {
			break // the call is over; RecvMsg says how
		}
	}
	if err := st.CloseSend(); err != nil {
		return &rpcError{err}
	}
	out := protojson.MarshalOptions{Resolver: types}
	for {
		resp := dynamicpb.NewMessage(desc.Output())
		err := st.RecvMsg(resp)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return &rpcError{err}
		}
		b, err := out.Marshal(resp)
		if err != nil {
			return fmt.Errorf("printing the response: %w", err)
		}
		// protojson varies its spacing on purpose; indenting it again
		// prints the same response the same way every time.
		var pretty bytes.Buffer
		if err := json.Indent(&pretty, b, "", "  "); err != nil {
			return fmt.Errorf("printing the response: %w", err)
		}
		pretty.WriteByte('\n')
		if _, err := pretty.WriteTo(w); err != nil {
			return err
		}
		if !desc.IsStreamingServer() {
			return nil
		}
	}
}

// splitMethod reads "pkg.Service/Method", "/pkg.Service/Method" or
// "pkg.Service.Method".
func splitMethod(s string) (service, method string, err error) {
	t := strings.TrimPrefix(s, "/")
	i := strings.LastIndex(t, "/")
	if i < 0 {
		i = strings.LastIndex(t, ".")
	}
	if i <= 0 || i == len(t)-1 {
		return "", "", &badInput{fmt.Sprintf("method %q: want pkg.Service/Method or pkg.Service.Method", s)}
	}
	return t[:i], t[i+1:], nil
}

// filesOf asks the client's reflection, through the gateway, for the file
// that defines service and every file it depends on.
func filesOf(ctx context.Context, cc grpc.ClientConnInterface, service string) (*protoregistry.Files, error) {
	rctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the reflection stream
	st, err := reflectionv1.NewServerReflectionClient(cc).ServerReflectionInfo(rctx)
	if err != nil {
		return nil, reflectionError(err)
	}
	ask := func(req *reflectionv1.ServerReflectionRequest) (*reflectionv1.ServerReflectionResponse, error) {
		// A refused call fails its send with io.EOF; its receive says why.
		_ = st.Send(req)
		resp, err := st.Recv()
		if err != nil {
			return nil, reflectionError(err)
		}
		return resp, nil
	}
	resp, err := ask(&reflectionv1.ServerReflectionRequest{
		MessageRequest: &reflectionv1.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: service},
	})
	if err != nil {
		return nil, err
	}
	if e := resp.GetErrorResponse(); e != nil {
		if codes.Code(e.GetErrorCode()) != codes.NotFound {
			return nil, fmt.Errorf("the client's reflection could not describe %s: %v: %s", service, codes.Code(e.GetErrorCode()), e.GetErrorMessage())
		}
		msg := fmt.Sprintf("the client serves no service %s", service)
		if list, err := ask(&reflectionv1.ServerReflectionRequest{
			MessageRequest: &reflectionv1.ServerReflectionRequest_ListServices{},
		}); err == nil && list.GetListServicesResponse() != nil {
			var names []string
			for _, s := range list.GetListServicesResponse().GetService() {
				names = append(names, s.GetName())
			}
			slices.Sort(names)
			msg += "; it serves " + strings.Join(names, ", ")
		}
		return nil, &badInput{msg}
	}
	have := map[string]*descriptorpb.FileDescriptorProto{}
	var pending []string // dependencies not received yet
	add := func(fd *reflectionv1.FileDescriptorResponse) error {
		for _, raw := range fd.GetFileDescriptorProto() {
			f := new(descriptorpb.FileDescriptorProto)
			if err := proto.Unmarshal(raw, f); err != nil {
				return fmt.Errorf("the client's reflection sent a bad file descriptor: %w", err)
			}
			have[f.GetName()] = f
			pending = append(pending, f.GetDependency()...)
		}
		return nil
	}
	if err := add(resp.GetFileDescriptorResponse()); err != nil {
		return nil, err
	}
	// grpc-go sends the dependencies along; other servers may send only
	// the file asked for.
	for len(pending) > 0 {
		name := pending[len(pending)-1]
		pending = pending[:len(pending)-1]
		if _, ok := have[name]; ok {
			continue
		}
		resp, err := ask(&reflectionv1.ServerReflectionRequest{
			MessageRequest: &reflectionv1.ServerReflectionRequest_FileByFilename{FileByFilename: name},
		})
		if err != nil {
			return nil, err
		}
		if e := resp.GetErrorResponse(); e != nil {
			return nil, fmt.Errorf("the client's reflection could not send %s, which %s needs: %s", name, service, e.GetErrorMessage())
		}
		if err := add(resp.GetFileDescriptorResponse()); err != nil {
			return nil, err
		}
	}
	set := &descriptorpb.FileDescriptorSet{}
	for _, f := range have {
		set.File = append(set.File, f)
	}
	files, err := protodesc.NewFiles(set)
	if err != nil {
		return nil, fmt.Errorf("the client's reflection sent descriptors that do not fit together: %w", err)
	}
	return files, nil
}

// reflectionError explains a failed reflection call: the gateway's
// refusals keep their status; a client without reflection is told how to
// add it.
func reflectionError(err error) error {
	if status.Code(err) == codes.Unimplemented {
		return fmt.Errorf("the client serves no reflection (it needs reflection.Register on its *grpc.Server): %w", &rpcError{err})
	}
	return &rpcError{err}
}

func findMethod(files *protoregistry.Files, service, method string) (protoreflect.MethodDescriptor, error) {
	d, err := files.FindDescriptorByName(protoreflect.FullName(service))
	if err != nil {
		return nil, &badInput{fmt.Sprintf("the client's reflection does not describe service %s", service)}
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return nil, &badInput{fmt.Sprintf("%s is a %s, not a service", service, descriptorKind(d))}
	}
	m := sd.Methods().ByName(protoreflect.Name(method))
	if m == nil {
		var names []string
		for i := range sd.Methods().Len() {
			names = append(names, string(sd.Methods().Get(i).Name()))
		}
		return nil, &badInput{fmt.Sprintf("service %s has no method %s; its methods are %s", service, method, strings.Join(names, ", "))}
	}
	return m, nil
}

func descriptorKind(d protoreflect.Descriptor) string {
	switch d.(type) {
	case protoreflect.MessageDescriptor:
		return "message"
	case protoreflect.EnumDescriptor:
		return "enum"
	default:
		return "definition"
	}
}

// requestsOf reads the request messages from the JSON argument.
func requestsOf(cfg callConfig, m protoreflect.MethodDescriptor, types *dynamicpb.Types) ([]proto.Message, error) {
	text := cfg.json
	if !cfg.hasJSON && !m.IsStreamingClient() {
		text = "{}"
	}
	dec := json.NewDecoder(strings.NewReader(text))
	var raws []json.RawMessage
	for {
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, &badInput{fmt.Sprintf("the request is not JSON: %v", err)}
		}
		raws = append(raws, raw)
	}
	if !m.IsStreamingClient() && len(raws) != 1 {
		return nil, &badInput{fmt.Sprintf("%s takes one request message, and the JSON holds %d", m.FullName(), len(raws))}
	}
	in := protojson.UnmarshalOptions{Resolver: types}
	out := make([]proto.Message, 0, len(raws))
	for i, raw := range raws {
		msg := dynamicpb.NewMessage(m.Input())
		if err := in.Unmarshal(bytes.TrimSpace(raw), msg); err != nil {
			which := "the request"
			if m.IsStreamingClient() {
				which = fmt.Sprintf("request message %d", i+1)
			}
			return nil, &badInput{fmt.Sprintf("%s does not fit %s: %v", which, m.Input().FullName(), err)}
		}
		out = append(out, msg)
	}
	return out, nil
}
