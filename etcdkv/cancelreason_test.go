package etcdkv

import (
	"errors"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// etcd writes the whole gRPC error into a refused create's cancel reason;
// the source must still tell a denial and a stale token, which it renews,
// from other reasons.
func TestCancelReasons(t *testing.T) {
	for _, tc := range []struct {
		reason     string
		denied     bool
		stale      bool
		compacted  bool
		compactRev int64
	}{
		{reason: rpctypes.ErrGRPCPermissionDenied.Error(), denied: true},
		{reason: rpctypes.ErrGRPCInvalidAuthToken.Error(), stale: true},
		{reason: rpctypes.ErrGRPCAuthOldRevision.Error(), stale: true},
		{reason: "etcdserver: permission denied", denied: true}, // a bare description, as older servers write
		{reason: "", compactRev: 7, compacted: true},
		{reason: "something else"},
	} {
		err := cancelErr(&pb.WatchResponse{Created: true, Canceled: true, WatchId: -1, CancelReason: tc.reason, CompactRevision: tc.compactRev})
		if got := errors.Is(accessClass(err), ErrPermissionDenied); got != tc.denied {
			t.Errorf("reason %q -> %v: denied %v, want %v", tc.reason, err, got, tc.denied)
		}
		if got := staleToken(err); got != tc.stale {
			t.Errorf("reason %q -> %v: stale token %v, want %v", tc.reason, err, got, tc.stale)
		}
		if got := errors.Is(err, rpctypes.ErrCompacted); got != tc.compacted {
			t.Errorf("reason %q -> %v: compacted %v, want %v", tc.reason, err, got, tc.compacted)
		}
	}
}

// FuzzCancelReason: whatever etcd writes as a cancel reason, reading it
// never panics, and a reason that carries a known description keeps its
// meaning wherever the gRPC wrapping puts it.
func FuzzCancelReason(f *testing.F) {
	for _, e := range []error{rpctypes.ErrGRPCPermissionDenied, rpctypes.ErrGRPCInvalidAuthToken, rpctypes.ErrGRPCAuthOldRevision, rpctypes.ErrGRPCCompacted} {
		f.Add(e.Error())
	}
	f.Add("rpc error: code = ")
	f.Add("rpc error: code = Bogus desc = ")
	f.Add("")
	f.Fuzz(func(t *testing.T, reason string) {
		err := reasonErr(reason)
		if err == nil {
			t.Fatalf("reasonErr(%q) = nil", reason)
		}
		if reason == rpctypes.ErrGRPCPermissionDenied.Error() && !errors.Is(accessClass(err), ErrPermissionDenied) {
			t.Fatalf("reasonErr(%q) = %v, not a denial", reason, err)
		}
	})
}
