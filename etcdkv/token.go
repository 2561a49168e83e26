package etcdkv

import (
	"context"
	"errors"
	"strconv"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// Every identity talks to etcd over the source's one client connection:
// etcd authenticates each request by the token in its metadata, not by the
// connection, so a connection can carry many users. An identity costs its
// credentials and its token instead of a client with its own connection
// and goroutines.
//
// etcd invalidates every token whenever users, roles or permissions change
// (a request with an older token fails with "auth revision is old"), and
// simple tokens expire when unused. A request that fails so renews its
// identity's token (one Authenticate per identity, shared by concurrent
// requests) and is tried once more; a renewal that etcd refuses (the
// password changed, the user was deleted) fails the identity.

// identityKey is the context key under which a request's identity travels
// to renewToken.
type identityKey struct{}

// ctx returns ctx carrying id's current token, as the metadata etcd reads,
// and id itself, for renewal. Whatever credentials ctx carried are
// replaced: etcd authenticates a request by the first token it finds, and
// a caller's metadata must not make it someone else's. An anonymous
// identity carries none.
func (id *identity) ctx(ctx context.Context) context.Context {
	return id.ctxWithToken(ctx, id.currentToken())
}

// ctxWithToken is ctx with token as id's, for a caller that read the token
// already (a watch stream is filed under the token it carries).
func (id *identity) ctxWithToken(ctx context.Context, token string) context.Context {
	md, _ := metadata.FromOutgoingContext(ctx)
	md = md.Copy()
	md.Delete(rpctypes.TokenFieldNameGRPC)
	md.Delete("authorization")
	if id.password != "" {
		md.Set(rpctypes.TokenFieldNameGRPC, token)
		ctx = context.WithValue(ctx, identityKey{}, id)
	}
	return metadata.NewOutgoingContext(ctx, md)
}

func (id *identity) currentToken() string {
	id.tokenMu.Lock()
	defer id.tokenMu.Unlock()
	return id.token
}

// staleToken reports whether err says the token a request carried is no
// longer valid, so a new one may succeed.
func staleToken(err error) bool {
	err = rpctypes.Error(err)
	return errors.Is(err, rpctypes.ErrInvalidAuthToken) || errors.Is(err, rpctypes.ErrAuthOldRevision) ||
		errors.Is(err, rpctypes.ErrUserEmpty)
}

// renew replaces id's token if it is still old, the token a request failed
// with. Concurrent renewals of one identity share one Authenticate.
func (id *identity) renew(ctx context.Context, old string) error {
	id.tokenMu.Lock()
	if id.token != old {
		id.tokenMu.Unlock()
		return nil // someone renewed it already
	}
	if c := id.renewing; c != nil {
		id.tokenMu.Unlock()
		select {
		case <-c.done:
			return c.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	c := &renewCall{done: make(chan struct{})}
	id.renewing = c
	id.tokenMu.Unlock()

	// Shared by every request of the identity, so not under one's context
	// (nor with its identity: Authenticate needs no token).
	actx, cancel := context.WithTimeout(context.Background(), id.s.cfg.RequestTimeout)
	resp, err := id.s.conn.Authenticate(actx, id.user, id.password)
	cancel()

	id.tokenMu.Lock()
	if err == nil {
		id.token = resp.Token
	}
	id.renewing = nil
	id.tokenMu.Unlock()
	if err != nil {
		c.err = wrapErr("renewing the token of "+strconv.Quote(id.user), err)
		if errors.Is(c.err, ErrAuthFailed) {
			id.s.rejected(id)
		}
	}
	close(c.done)
	return c.err
}

// renewCall is one token renewal. err is written before done is closed and
// read only after.
type renewCall struct {
	done chan struct{}
	err  error
}

// renewInterceptor is the innermost unary interceptor of the source's
// client: a request that failed because its token is stale renews the
// token of the identity it was made for and is tried once more with the
// new one. (The client's own retry, which runs around it, cannot: the
// client has no credentials of its own.)
func renewInterceptor(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	id, _ := ctx.Value(identityKey{}).(*identity)
	if err == nil || id == nil || !staleToken(err) {
		return err
	}
	md, _ := metadata.FromOutgoingContext(ctx)
	var old string
	if v := md.Get(rpctypes.TokenFieldNameGRPC); len(v) > 0 {
		old = v[len(v)-1]
	}
	// A burst of auth changes can make the new token stale too: renew a
	// few times before giving up (the error is then a transient one).
	for range 3 {
		if rerr := id.renew(ctx, old); rerr != nil {
			return rerr
		}
		old = id.currentToken()
		md = md.Copy()
		md.Set(rpctypes.TokenFieldNameGRPC, old)
		if err = invoker(metadata.NewOutgoingContext(ctx, md), method, req, reply, cc, opts...); err == nil || !staleToken(err) {
			return err
		}
	}
	return err
}
