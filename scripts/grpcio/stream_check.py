"""12 concurrent IngestCalls streams (1,000 records each unless RECORDS says) from grpcio (one
DATA frame per record) into two replicas, optionally while the customer's
row is locked for a few seconds (the writer stalls)."""
import subprocess, sys, threading, time
import os
import grpc
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "stubs"))
from billing.v1 import billing_pb2 as pb, billing_pb2_grpc as rpc

addrs = sys.argv[1].split(",")
stall = float(sys.argv[2]) if len(sys.argv) > 2 else 0
db = sys.argv[3] if len(sys.argv) > 3 else None
ch = grpc.insecure_channel(addrs[0])
cust = rpc.CustomerServiceStub(ch)
plan = cust.CreatePlan(pb.CreatePlanRequest(name=f"p{time.time()}", kind=pb.PLAN_KIND_POSTPAID, per_minute_micros=60000, billing_increment_seconds=1))
c = cust.CreateCustomer(pb.CreateCustomerRequest(name="grpcio", phone_number=f"+1415555{int(time.time()*1000)%10000:04d}", plan_id=plan.id))
results = [None] * 12
def stream(n):
    channel = grpc.insecure_channel(addrs[n % len(addrs)])
    stub = rpc.CallServiceStub(channel)
    def records():
        for i in range(int(sys.argv[4]) if len(sys.argv) > 4 else 1000):
            yield pb.AddCallRequest(customer_id=c.id, duration_seconds=60, call_id=f"g{n}-{i}")
    try:
        r = stub.IngestCalls(records())
        results[n] = ("ok", r.accepted, r.rejected)
    except grpc.RpcError as e:
        results[n] = ("error", e.code().name, e.details())
locker = None
if stall and db:
    locker = subprocess.Popen(["psql", db, "-q", "-c", f"BEGIN; SELECT id FROM customers WHERE id = {c.id} FOR UPDATE; SELECT pg_sleep({stall}); COMMIT;"], stdout=subprocess.DEVNULL)
    time.sleep(0.3)
began = time.time()
threads = [threading.Thread(target=stream, args=(n,)) for n in range(12)]
for t in threads: t.start()
for t in threads: t.join()
if locker: locker.wait()
print(f"{time.time() - began:.1f} s")
for n, r in enumerate(results): print(n, r)
