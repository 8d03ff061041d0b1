"""64 concurrent IngestCalls streams (10,000 records each) from switch A,
while switch B sends AddCalls one after another: B's latency, and how A's
streams ended."""
import sys, threading, time
import os
import grpc
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "stubs"))
from billing.v1 import billing_pb2 as pb, billing_pb2_grpc as rpc

addr, password = sys.argv[1], sys.argv[2]
ch = grpc.insecure_channel(addr)
acc = rpc.AccountServiceStub(ch)
token = acc.Login(pb.LoginRequest(username="admin", password=password)).access_token
admin = [("authorization", f"Bearer {token}")]
cust = rpc.CustomerServiceStub(ch)
plan = cust.CreatePlan(pb.CreatePlanRequest(name="p", kind=pb.PLAN_KIND_POSTPAID, per_minute_micros=60000, billing_increment_seconds=1), metadata=admin)
keys, customers = [], []
for n in range(2):
    op = cust.CreateOperator(pb.CreateOperatorRequest(name=f"op{n}"), metadata=admin)
    c = cust.CreateCustomer(pb.CreateCustomerRequest(name=f"c{n}", phone_number=f"+1415555000{n}", plan_id=plan.id, operator_ids=[op.id]), metadata=admin)
    a = acc.CreateAccount(pb.CreateAccountRequest(username=f"switch{n}", password="a long enough password", role=pb.ROLE_SWITCH, operator_id=op.id), metadata=admin)
    k = acc.CreateApiKey(pb.CreateApiKeyRequest(name="k", account_id=a.id), metadata=admin)
    keys.append([("authorization", f"Bearer {k.secret}")])
    customers.append(c.id)
outcomes = {}
lock = threading.Lock()
def stream(n):
    stub = rpc.CallServiceStub(grpc.insecure_channel(addr))
    def records():
        for i in range(10000):
            yield pb.AddCallRequest(customer_id=customers[0], duration_seconds=60, call_id=f"a{n}-{i}")
    try:
        r = stub.IngestCalls(records(), metadata=keys[0])
        key = "OK"
    except grpc.RpcError as e:
        key = e.code().name
    with lock:
        outcomes[key] = outcomes.get(key, 0) + 1
done = threading.Event()
latencies = []
def unary():
    stub = rpc.CallServiceStub(grpc.insecure_channel(addr))
    i = 0
    while not done.is_set():
        t = time.time()
        stub.AddCall(pb.AddCallRequest(customer_id=customers[1], duration_seconds=30, call_id=f"b-{i}"), metadata=keys[1])
        latencies.append(time.time() - t)
        i += 1
u = threading.Thread(target=unary); u.start()
threads = [threading.Thread(target=stream, args=(n,)) for n in range(64)]
began = time.time()
for t in threads: t.start()
for t in threads: t.join()
done.set(); u.join()
latencies.sort()
pick = lambda p: latencies[min(len(latencies) - 1, int(p * (len(latencies) - 1)))] * 1000
print(f"{time.time() - began:.1f} s; switch A's 64 streams: {outcomes}")
print(f"switch B AddCall: {len(latencies)} calls, p50 {pick(0.5):.1f} ms, p99 {pick(0.99):.1f} ms, max {latencies[-1]*1000:.1f} ms")
