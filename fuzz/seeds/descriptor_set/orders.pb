
ê
fuzzseed.protoshop.orders.v1"
Req
id (	Rid2m
Orders/
Get.shop.orders.v1.Req.shop.orders.v1.Req2
List.shop.orders.v1.Req.shop.orders.v1.Req02:
Admin1
Drain.shop.orders.v1.Req.shop.orders.v1.Reqbproto3