package brpccmd

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/brpc-go/brpc/adminpb"
)

type peersConfig struct {
	gw       gatewayFlags
	watch    bool
	rejected bool
	cluster  bool
	timeout  time.Duration
}

func peersFlags(Extensions) (*flag.FlagSet, func(io.Writer) error) {
	var cfg peersConfig
	fs := flag.NewFlagSet("peers", flag.ContinueOnError)
	cfg.gw.register(fs)
	fs.BoolVar(&cfg.watch, "watch", false, "after the list, print clients connecting and disconnecting as it happens, until interrupted")
	fs.BoolVar(&cfg.rejected, "rejected", false, "with -watch, also print clients refused while connecting")
	fs.BoolVar(&cfg.cluster, "cluster", false, "on a replica of a cluster, list the clients of every replica, with the replica holding each, as this one knows them")
	fs.DurationVar(&cfg.timeout, "timeout", 10*time.Second, "give up on the list after this long (without -watch)")
	return fs, func(stdout io.Writer) error {
		if err := cfg.gw.check(); err != nil {
			return err
		}
		if cfg.timeout <= 0 {
			return &badUsage{fmt.Sprintf("-timeout must be positive, not %v", cfg.timeout)}
		}
		if cfg.rejected && !cfg.watch {
			return &badUsage{"-rejected goes with -watch"}
		}
		if cfg.cluster && cfg.watch {
			return &badUsage{"-cluster lists, it does not watch: -cluster and -watch do not go together"}
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return peers(ctx, cfg, stdout)
	}
}

// peers prints the server's connected clients and, with -watch, their
// comings and goings until ctx ends.
func peers(ctx context.Context, cfg peersConfig, w io.Writer) error {
	cc, err := cfg.gw.dial()
	if err != nil {
		return err
	}
	defer cc.Close()
	admin := adminpb.NewAdminClient(cc)
	if cfg.cluster {
		lctx, cancel := context.WithTimeout(ctx, cfg.timeout)
		defer cancel()
		return clusterPeers(lctx, cfg, admin, w)
	}
	// A replica's own clients are not the cluster's: say so. A server
	// without ListClusterPeers is no replica.
	rctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	replica := replicaName(rctx, admin)
	cancel()
	if !cfg.watch {
		lctx, cancel := context.WithTimeout(ctx, cfg.timeout)
		defer cancel()
		var list []*adminpb.Peer
		req := &adminpb.ListPeersRequest{}
		for {
			resp, err := admin.ListPeers(lctx, req)
			if err != nil {
				return fmt.Errorf("listing the clients at %s%s: %w", cfg.gw.addr, noAdminHint(err), &rpcError{err})
			}
			list = append(list, resp.GetPeers()...)
			if resp.GetNextPageToken() == "" {
				break
			}
			req.PageToken = resp.GetNextPageToken()
		}
		return printPeers(w, list, time.Now(), replica)
	}

	// The watch lives until the user interrupts it: then ctx ends, and so
	// does the call.
	stream, err := admin.WatchPeers(ctx, &adminpb.WatchPeersRequest{IncludeCurrent: true, IncludeRejected: cfg.rejected})
	if err != nil {
		return watchError(ctx, cfg, err)
	}
	var current []*adminpb.Peer
	for {
		ev, err := stream.Recv()
		if err != nil {
			return watchError(ctx, cfg, err)
		}
		switch ev.GetType() {
		case adminpb.PeerEventType_PEER_EVENT_TYPE_CURRENT:
			current = append(current, ev.GetPeer())
			continue
		case adminpb.PeerEventType_PEER_EVENT_TYPE_SYNCED:
			if err := printPeers(w, current, ev.GetTime().AsTime(), replica); err != nil {
				return err
			}
			current = nil
			fmt.Fprintln(w, "Watching for clients connecting and disconnecting; interrupt to stop.")
			continue
		}
		fmt.Fprintln(w, eventLine(ev))
	}
}

// watchError reports how a watch ended: an interrupt is the normal end.
func watchError(ctx context.Context, cfg peersConfig, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	if status.Code(err) == codes.ResourceExhausted {
		return fmt.Errorf("the watch fell behind the server and was ended; run it again: %w", &rpcError{err})
	}
	return fmt.Errorf("watching the clients at %s%s: %w", cfg.gw.addr, noAdminHint(err), &rpcError{err})
}

// noAdminHint explains the refusals of a gateway without the admin
// service: its call is then relayed like any, and refused for naming no
// client (or, by a server without a gateway, unimplemented).
func noAdminHint(err error) string {
	switch status.Code(err) {
	case codes.InvalidArgument, codes.Unimplemented:
		return " (does the server register the admin service there, with RegisterAdmin?)"
	}
	return ""
}

// replicaName asks the admin service which replica it belongs to; "" when
// the server is none, or cannot say.
func replicaName(ctx context.Context, admin adminpb.AdminClient) string {
	resp, err := admin.ListClusterPeers(ctx, &adminpb.ListClusterPeersRequest{PageSize: 1})
	if err != nil {
		return ""
	}
	return resp.GetReplica()
}

// clusterPeers prints the clients of every replica of the server's
// cluster.
func clusterPeers(ctx context.Context, cfg peersConfig, admin adminpb.AdminClient, w io.Writer) error {
	var list []*adminpb.ClusterPeer
	var replica string
	req := &adminpb.ListClusterPeersRequest{}
	for {
		resp, err := admin.ListClusterPeers(ctx, req)
		if err != nil {
			hint := noAdminHint(err)
			if status.Code(err) == codes.Unimplemented {
				hint = " (does the server register the admin service there, of a brpc with ListClusterPeers?)"
			}
			return fmt.Errorf("listing the cluster's clients at %s%s: %w", cfg.gw.addr, hint, &rpcError{err})
		}
		list = append(list, resp.GetPeers()...)
		replica = resp.GetReplica()
		if resp.GetNextPageToken() == "" {
			break
		}
		req.PageToken = resp.GetNextPageToken()
	}
	where := fmt.Sprintf("the cluster, as replica %s knows them", replica)
	if replica == "" {
		where = "this server, which is no replica of a cluster"
	}
	if len(list) == 0 {
		_, err := fmt.Fprintf(w, "No clients connected to %s.\n", where)
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tREPLICA")
	for _, p := range list {
		fmt.Fprintf(tw, "%s\t%s\n", p.GetId(), p.GetReplica())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "%d client(s) connected to %s.\n", len(list), where)
	return err
}

// printPeers prints a table of the clients, with their connection times
// relative to now. replica names the replica whose clients they are, if
// the server is one.
func printPeers(w io.Writer, list []*adminpb.Peer, now time.Time, replica string) error {
	if len(list) == 0 {
		if replica != "" {
			_, err := fmt.Fprintf(w, "No clients connected to replica %s (-cluster lists every replica's).\n", replica)
			return err
		}
		_, err := fmt.Fprintln(w, "No clients connected.")
		return err
	}
	var table strings.Builder
	tw := tabwriter.NewWriter(&table, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTRANSPORT\tADDRESS\tCONNECTED\tMETADATA")
	for _, p := range list {
		connected := "-"
		if at := p.GetConnectedAt(); at != nil {
			t := at.AsTime().Local()
			connected = fmt.Sprintf("%s (%s ago)", t.Format(time.DateTime), now.Sub(t).Round(time.Second))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", p.GetId(), p.GetTransport(), p.GetRemoteAddr(), connected, metadataText(p))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// An empty last column leaves the padding of the one before it.
	for _, line := range strings.SplitAfter(table.String(), "\n") {
		if line != "" {
			if _, err := io.WriteString(w, strings.TrimRight(line, " \n")+"\n"); err != nil {
				return err
			}
		}
	}
	if replica != "" {
		_, err := fmt.Fprintf(w, "%d client(s) connected to replica %s (-cluster lists every replica's).\n", len(list), replica)
		return err
	}
	_, err := fmt.Fprintf(w, "%d client(s) connected.\n", len(list))
	return err
}

// eventLine is how a watch prints one event.
func eventLine(ev *adminpb.PeerEvent) string {
	at := time.Now()
	if ev.GetTime() != nil {
		at = ev.GetTime().AsTime()
	}
	p := ev.GetPeer()
	var b strings.Builder
	fmt.Fprintf(&b, "%s ", at.Local().Format(time.TimeOnly))
	switch ev.GetType() {
	case adminpb.PeerEventType_PEER_EVENT_TYPE_CONNECTED:
		fmt.Fprintf(&b, "connected     %s over %s from %s", p.GetId(), p.GetTransport(), p.GetRemoteAddr())
		if md := metadataText(p); md != "" {
			fmt.Fprintf(&b, " %s", md)
		}
	case adminpb.PeerEventType_PEER_EVENT_TYPE_DISCONNECTED:
		fmt.Fprintf(&b, "disconnected  %s (%s: %s)", p.GetId(), ev.GetKind(), ev.GetReason())
	case adminpb.PeerEventType_PEER_EVENT_TYPE_REJECTED:
		fmt.Fprintf(&b, "rejected      a client over %s from %s: %s", p.GetTransport(), p.GetRemoteAddr(), ev.GetReason())
	default:
		fmt.Fprintf(&b, "%v %s", ev.GetType(), p.GetId())
	}
	return b.String()
}

// metadataText prints a client's metadata as key=value pairs ordered by
// key, a key's values joined by commas.
func metadataText(p *adminpb.Peer) string {
	md := p.GetMetadata()
	keys := make([]string, 0, len(md))
	for k := range md {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+strings.Join(md[k].GetValues(), ","))
	}
	return strings.Join(parts, " ")
}
