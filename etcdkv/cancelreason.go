package etcdkv

import (
	"errors"
	"strings"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// cancelErr is why etcd cancelled a watch: compaction past its start, a
// refusal (permission denied, a stale token), or another reason.
func cancelErr(resp *pb.WatchResponse) error {
	switch {
	case resp.CompactRevision != 0:
		return rpctypes.ErrCompacted
	case resp.CancelReason != "":
		return reasonErr(resp.CancelReason)
	}
	return errors.New("etcdkv: watch cancelled by etcd")
}

// reasonErr turns a cancel reason into the error etcd means. etcd writes
// the whole gRPC error there ("rpc error: code = PermissionDenied desc =
// etcdserver: permission denied"); its description is what rpctypes knows
// (ErrPermissionDenied, ErrInvalidAuthToken, ErrAuthOldRevision...).
func reasonErr(reason string) error {
	code, desc := codes.FailedPrecondition, reason
	if _, rest, ok := strings.Cut(reason, "rpc error: code = "); ok {
		if name, d, ok := strings.Cut(rest, " desc = "); ok {
			desc = d
			for c := codes.OK; c <= codes.Unauthenticated; c++ {
				if c.String() == name {
					code = c
				}
			}
		}
	}
	return rpctypes.Error(status.Error(code, desc))
}
